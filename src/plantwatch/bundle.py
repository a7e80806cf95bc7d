"""``DetectorBundle``: everything needed to turn canonical readings into decisions, in one object.

A bundle is the unit that is trained, gated, registered, served and rolled back: fitted features,
fitted detector, the operating threshold and review band set from the alert budget, and the
deterministic rules. Training, evaluation, batch scoring and the HTTP service all go through the
same methods here, so a model cannot behave differently in production than in its evaluation.

Memory stays bounded at any size: rows are featurised and scored in blocks of at most
``CHUNK_ROWS``, cut per asset with ``window_`` readings of overlap so that every row still sees its
full history (features are causal and need at most ``window_`` earlier readings). The result is
identical to featurising the whole frame at once.

Saved with ``skops.io.dump``; it only contains plantwatch / sklearn / numpy / scipy / builtins
types: no lambdas, no pandas objects, rules as plain dicts and lists.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plantwatch import schema
from plantwatch.errors import DataError
from plantwatch.evaluation import epoch_ns
from plantwatch.rules import apply_rules, decisions_from_scores

#: Columns ``score_frame`` returns, in order.
SCORE = "score"
DECISION = "decision"
RULES = "rules"
TOP_SENSORS = "top_sensors"
OUTPUT_COLUMNS = (SCORE, DECISION, RULES, TOP_SENSORS)
#: How many sensors ``top_sensors`` names per reading.
N_TOP_SENSORS = 3
#: Most rows featurised at once (a memory bound, not a modelling choice: results do not depend on it).
CHUNK_ROWS = 100_000


def _asset_codes(df: pd.DataFrame) -> np.ndarray:
    if schema.ASSET not in df.columns:
        return np.zeros(len(df), dtype=np.int64)
    return pd.factorize(df[schema.ASSET].astype(str), sort=True)[0]


def _time_order(df: pd.DataFrame, codes: np.ndarray) -> np.ndarray:
    """Row positions sorted by (asset, timestamp), stable (ties keep input order)."""
    if schema.TIMESTAMP not in df.columns:
        return np.argsort(codes, kind="stable")
    ts = epoch_ns(df[schema.TIMESTAMP])
    return np.lexsort((np.arange(len(df)), ts, codes))


def feature_blocks(
    features: Any, df: pd.DataFrame, chunk_rows: int = CHUNK_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(row positions in df, feature matrix of those rows)`` blocks covering every row once.

    Each asset's rows (in time order) are cut into pieces of at most ``chunk_rows``; a piece is
    featurised together with the ``features.window_`` readings before it, which are then dropped.
    Small pieces of several assets are packed into one block to keep the call count low.
    """
    n = len(df)
    if n == 0:
        return
    window = int(features.window_)
    codes = _asset_codes(df)
    order = _time_order(df, codes)
    sorted_codes = codes[order]
    bounds = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1], True])
    pieces: list[tuple[int, int, int]] = []  # (context start, start, end) in sorted positions
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        for start in range(int(a), int(b), chunk_rows):
            pieces.append((max(int(a), start - window), start, min(start + chunk_rows, int(b))))
    for batch in _batches(pieces, chunk_rows):
        take = np.concatenate([order[c:e] for c, _, e in batch])
        lengths = np.array([e - c for c, _, e in batch])
        offsets = np.r_[0, np.cumsum(lengths)[:-1]]
        keep = np.concatenate(
            [np.arange(s - c, e - c) + off for (c, s, e), off in zip(batch, offsets, strict=True)]
        )
        X = features.transform(df.iloc[take]).to_numpy(dtype=np.float32)
        yield take[keep], X[keep]


def _batches(pieces: list[tuple[int, int, int]], chunk_rows: int) -> Iterator[list[tuple[int, int, int]]]:
    """Group consecutive pieces while their rows (context included) fit in ``chunk_rows``."""
    batch: list[tuple[int, int, int]] = []
    size = 0
    for piece in pieces:
        length = piece[2] - piece[0]
        if batch and size + length > chunk_rows:
            yield batch
            batch, size = [], 0
        batch.append(piece)
        size += length
    if batch:
        yield batch


def feature_matrix(
    features: Any,
    df: pd.DataFrame,
    context: pd.DataFrame | None = None,
    keep: np.ndarray | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> np.ndarray:
    """Features of the rows of ``df`` (input order), float32, computed block by block.

    ``context``: earlier readings of the same assets, used only as history (see ``with_context``).
    ``keep``: boolean mask over ``df``; only those rows are returned (all rows are still featurised,
    as history), without materialising the full matrix first.
    """
    frame, n_ctx = with_context(context, df, int(features.window_))
    wanted = np.r_[np.zeros(n_ctx, dtype=bool), np.ones(len(df), dtype=bool) if keep is None else keep]
    slot = np.cumsum(wanted) - 1  # output row of each wanted frame row
    out = np.empty((int(wanted.sum()), len(features.feature_names_out_)), dtype=np.float32)
    for rows, X in feature_blocks(features, frame, chunk_rows):
        hit = wanted[rows]
        out[slot[rows[hit]]] = X[hit]
    return out


def history_tail(frame: pd.DataFrame, window: int) -> pd.DataFrame:
    """The last ``window`` readings (by time) of each asset: all the history the features need."""
    if schema.ASSET not in frame.columns:
        return frame.sort_values(schema.TIMESTAMP, kind="stable").tail(window)
    ordered = frame.sort_values([schema.ASSET, schema.TIMESTAMP], kind="stable")
    return ordered.groupby(schema.ASSET, sort=False).tail(window)


def with_context(context: pd.DataFrame | None, df: pd.DataFrame, window: int) -> tuple[pd.DataFrame, int]:
    """``df`` preceded by the last ``window`` readings per asset of ``context`` before ``df`` starts.

    Lets a period be scored as if the stream had never stopped (no cold-start windows at its
    start). Returns the combined frame and how many leading rows are context.
    """
    if context is None or context.empty or window <= 0 or df.empty:
        return df, 0
    # only readings from before the period are history (a train part may also hold newer rows)
    context = context[context[schema.TIMESTAMP] < df[schema.TIMESTAMP].min()]
    if schema.ASSET in context.columns and schema.ASSET in df.columns:
        context = context[context[schema.ASSET].isin(df[schema.ASSET].unique())]
    tail = history_tail(context, window)
    return pd.concat([tail, df], ignore_index=True), len(tail)


class DetectorBundle:
    """Fitted features + detector + threshold/review band + rules (see docs/ARCHITECTURE.md)."""

    def __init__(
        self,
        *,
        kind: str,
        sensors: list[str],
        assets: list[str],
        features: Any,
        detector: Any,
        threshold_: float,
        review_low_: float,
        rules: dict[str, Any],
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if review_low_ > threshold_:
            raise ValueError(f"review_low_ ({review_low_}) must not exceed threshold_ ({threshold_})")
        self.kind = str(kind)
        self.sensors = [str(s) for s in sensors]
        self.assets = [str(a) for a in assets]
        self.features = features
        self.detector = detector
        self.threshold_ = float(threshold_)
        self.review_low_ = float(review_low_)
        self.rules = rules
        self.window_ = int(features.window_)
        self.metadata = dict(metadata or {})
        # feature -> sensor matrix (features x sensors): per-sensor contributions are one product
        sensor_pos = {s: j for j, s in enumerate(self.sensors)}
        names = list(features.feature_names_out_)
        self.sensor_map_ = np.zeros((len(names), len(self.sensors)))
        for i, name in enumerate(names):
            sensor = features.feature_sensor_.get(name)
            if sensor in sensor_pos:
                self.sensor_map_[i, sensor_pos[sensor]] = 1.0

    def __repr__(self) -> str:
        return (f"DetectorBundle(kind={self.kind!r}, sensors={len(self.sensors)}, assets={len(self.assets)}, "
                f"threshold_={self.threshold_:.4g}, review_low_={self.review_low_:.4g})")

    def set_operating_point(self, threshold: float, review_low: float) -> DetectorBundle:
        """Set the threshold and review band (once validation scores are known); returns the bundle."""
        if review_low > threshold:
            raise ValueError(f"review_low ({review_low}) must not exceed threshold ({threshold})")
        self.threshold_, self.review_low_ = float(threshold), float(review_low)
        return self

    # -- scoring ------------------------------------------------------------------------------------

    def _with_all_sensors(self, df: pd.DataFrame) -> pd.DataFrame:
        """A missing sensor column is read as all-missing (imputed by the features, flagged by rules)."""
        absent = [s for s in self.sensors if s not in df.columns]
        return df.assign(**{s: np.nan for s in absent}) if absent else df

    def anomaly_score(self, df: pd.DataFrame, context: pd.DataFrame | None = None) -> np.ndarray:
        """Score per row of ``df`` (input order; higher = more anomalous), no decisions or rules.

        ``context``: earlier readings of the same assets, used only as feature history.
        """
        frame, n_ctx = with_context(context, self._with_all_sensors(df), self.window_)
        scores = np.empty(len(frame), dtype=float)
        for rows, _, block_scores in self._scored_blocks(frame):
            scores[rows] = block_scores
        return scores[n_ctx:]

    def _scored_blocks(self, frame: pd.DataFrame) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(row positions, features, scores) per block of ``frame`` (see ``feature_blocks``)."""
        for rows, X in feature_blocks(self.features, frame):
            yield rows, X, np.asarray(self.detector.anomaly_score(X), dtype=float)

    def sensor_contributions(self, X: np.ndarray) -> np.ndarray:
        """(rows, sensors): the detector's per-feature contributions summed per source sensor."""
        return np.asarray(self.detector.feature_contributions(X), dtype=float) @ self.sensor_map_

    def score_frame(self, df: pd.DataFrame) -> pd.DataFrame:
        """Canonical rows in -> same rows (same order and index) with score, decision, rules, top_sensors.

        ``top_sensors`` lists up to three sensors with a positive contribution, largest first; a
        detector without attributions yields an empty list rather than an arbitrary order.
        """
        frame = self._with_all_sensors(df)
        scores = np.empty(len(frame), dtype=float)
        top: list[list[dict[str, Any]]] = [[] for _ in range(len(frame))]
        for rows, X, block_scores in self._scored_blocks(frame):
            scores[rows] = block_scores
            for i, entry in zip(rows, self._top_sensors(self.sensor_contributions(X)), strict=True):
                top[i] = entry
        first = [t[0]["sensor"] if t else None for t in top]
        ranks = decisions_from_scores(scores, self.threshold_, self.review_low_)
        decisions, fired = apply_rules(frame, ranks, first, self.rules, self.sensors)
        return pd.DataFrame(
            {SCORE: scores, DECISION: decisions, RULES: fired, TOP_SENSORS: top},
            index=df.index,
            columns=list(OUTPUT_COLUMNS),
        )

    def _top_sensors(self, contrib: np.ndarray) -> list[list[dict[str, Any]]]:
        k = min(N_TOP_SENSORS, contrib.shape[1])
        order = np.argsort(-contrib, axis=1, kind="stable")[:, :k]
        values = np.take_along_axis(contrib, order, axis=1)
        names = np.asarray(self.sensors, dtype=object)[order]
        # plain Python lists first: iterating numpy rows element by element is ~3x slower per row
        return [
            [{"sensor": str(s), "contribution": float(v)} for s, v in zip(row_s, row_v, strict=True) if v > 0]
            for row_s, row_v in zip(names.tolist(), values.tolist(), strict=True)
        ]


def save_bundle(bundle: DetectorBundle, path: Path) -> None:
    """skops-dump a bundle (atomic: a partly written file is never left under the final name)."""
    import skops.io as sio

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sio.dump(bundle, tmp)
    tmp.replace(path)


def load_bundle(path: Path) -> DetectorBundle:
    """Load one of this pipeline's bundles with the registry's restricted skops load.

    Only plantwatch / sklearn / numpy / scipy / builtins types are built; registered models also
    have their sha256 pinned by the registry, freshly trained ones (``models/``) have none yet.
    """
    from plantwatch.registry.integrity import load_skops

    bundle = load_skops(path, None, f"bundle {path}")
    if not isinstance(bundle, DetectorBundle):
        raise DataError(f"{path}: not a DetectorBundle but {type(bundle).__name__}")
    return bundle
