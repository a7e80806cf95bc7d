"""Score canonical telemetry with a ``DetectorBundle``: the one code path behind ``POST /score``,
``plantwatch score`` and monitoring.

Pure core: :func:`check_readings` (is this frame scorable by this bundle?) and
:func:`score_readings` (frame in any row order -> one result per row, same order). The I/O shell
(:func:`score_file`) reads a file, scores it, writes the results, appends the inference log and
enqueues review items — the same steps the service takes per request.

Rolling features need history: a reading is scored with the readings of its asset that precede it
*in the same call*, up to ``bundle.window_``. Shorter histories still get a score (features degrade
to the history there is) and are marked ``full_history = False`` so callers can tell. A repeated
(asset, timestamp) in one call is refused: two readings at one instant would distort the rolling
features of every reading after them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plantwatch import inference_log as ilog
from plantwatch import schema
from plantwatch.errors import DataError, HttpError, UsageError

logger = logging.getLogger(__name__)

SCORE = ilog.SCORE
DECISION = ilog.DECISION
RULES = ilog.RULES
TOP_SENSORS = ilog.TOP_SENSORS
FULL_HISTORY = ilog.FULL_HISTORY
RESULT_COLUMNS = [SCORE, DECISION, RULES, TOP_SENSORS, FULL_HISTORY]
BUNDLE_COLUMNS = [SCORE, DECISION, RULES, TOP_SENSORS]

#: Readings named in an error message before "... and N more" (keeps errors one line).
_MAX_LISTED = 5


class InvalidReadings(HttpError):
    """The readings cannot be scored by this model (unknown asset, duplicate, bad or missing column).

    400 in the service, exit code 1 in the CLI.
    """

    http_status = 400
    exit_code = 1


class ScoringFailed(HttpError):
    """The model produced something unusable (e.g. a non-finite score): a server-side fault."""

    http_status = 500
    exit_code = 1


def _listed(values: Iterable[Any]) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:_MAX_LISTED])
    return shown + (f" and {len(values) - _MAX_LISTED} more" if len(values) > _MAX_LISTED else "")


def check_readings(frame: pd.DataFrame, *, sensors: Sequence[str], assets: Sequence[str]) -> None:
    """Raise ``InvalidReadings`` unless every row is scorable by a bundle with these sensors/assets.

    Messages name row positions and the known vocabulary, never the offending values themselves
    (the service must not echo its input).
    """
    if frame.empty:
        raise InvalidReadings("no readings to score")
    missing = [c for c in (schema.TIMESTAMP, schema.ASSET, *sensors) if c not in frame.columns]
    if missing:
        raise InvalidReadings(f"missing column(s): {_listed(missing)}")
    non_numeric = [s for s in sensors if not pd.api.types.is_numeric_dtype(frame[s])]
    if non_numeric:
        raise InvalidReadings(f"sensor column(s) not numeric: {_listed(non_numeric)}")
    values = frame[list(sensors)].to_numpy(dtype="float64")
    if np.isinf(values).any():
        raise InvalidReadings("sensor values must be finite numbers or null (got infinity)")
    if frame[schema.TIMESTAMP].isna().any():
        raise InvalidReadings("every reading needs a timestamp")
    duplicated = frame.duplicated([schema.ASSET, schema.TIMESTAMP]).to_numpy()
    if duplicated.any():  # two readings of one asset at one instant make the rolling features wrong
        raise InvalidReadings(
            f"duplicate (asset, timestamp) in reading(s) {_listed(np.flatnonzero(duplicated))}"
        )
    unknown = ~frame[schema.ASSET].isin(list(assets))
    if unknown.any():
        rows = np.flatnonzero(unknown.to_numpy())
        raise InvalidReadings(
            f"unknown asset in reading(s) {_listed(rows)}; this model knows: {_listed(sorted(assets))}"
        )


def score_readings(bundle: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """One result row per input row, in input order: score, decision, rules, top_sensors, full_history.

    The bundle sees canonical order (sorted by asset, timestamp) so rolling windows run over each
    asset's own history; results are mapped back to the caller's order afterwards. Call
    :func:`check_readings` first.
    """
    sensors = list(bundle.sensors)
    order, history = _canonical_order(frame)
    in_order = bool(np.array_equal(order, np.arange(len(order))))
    canonical = frame[[schema.TIMESTAMP, schema.ASSET, *sensors]]
    canonical = (canonical if in_order else canonical.take(order)).reset_index(drop=True)
    scored = bundle.score_frame(canonical)
    if len(scored) != len(canonical):
        raise ScoringFailed(f"model returned {len(scored)} results for {len(canonical)} readings")
    out = scored[BUNDLE_COLUMNS].reset_index(drop=True)
    if not np.isfinite(out[SCORE].to_numpy(dtype="float64")).all():
        raise ScoringFailed("model produced a non-finite score")
    if history is None:
        history = canonical.groupby(schema.ASSET, sort=False).cumcount().to_numpy() + 1
    out[FULL_HISTORY] = history >= int(bundle.window_)
    if in_order:  # e.g. every 1-reading request: no reordering to undo
        out.index = frame.index
        return out
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    result = out.iloc[inverse].reset_index(drop=True)
    result.index = frame.index
    return result


def score_checked(bundle: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`check_readings` against the bundle's own sensors and assets, then :func:`score_readings`.

    The one entry point of both the service and ``plantwatch score``: what is refused and how rows
    are scored cannot drift apart between HTTP and batch.
    """
    check_readings(frame, sensors=list(bundle.sensors), assets=list(bundle.assets))
    return score_readings(bundle, frame)


def _canonical_order(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """Row positions in (asset, timestamp) order (stable) and, per sorted row, its 1-based count of
    readings of that asset so far (None when not computed here).

    Plain string assets and NaT-free datetime64[ns] timestamps (every validated request) are sorted
    with one ``np.lexsort``: the order ``sort_values([asset, timestamp], kind="stable")`` gives, a
    fraction of its per-call cost. Anything else takes that pandas path.
    """
    assets, ts = frame[schema.ASSET], frame[schema.TIMESTAMP]
    if ts.dtype == np.dtype("datetime64[ns]") and not ts.isna().any():
        values = assets.to_numpy()
        if values.dtype == object and all(type(v) is str for v in values):
            codes = pd.factorize(values, sort=True)[0]
            order = np.lexsort((np.arange(len(frame)), ts.to_numpy().view(np.int64), codes))
            sorted_codes = codes[order]
            idx = np.arange(len(order))
            starts = np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]
            first = np.maximum.accumulate(np.where(starts, idx, 0))
            return order, idx - first + 1
    keys = frame[[schema.ASSET, schema.TIMESTAMP]].reset_index(drop=True)
    return keys.sort_values([schema.ASSET, schema.TIMESTAMP], kind="stable").index.to_numpy(), None


def probe_frame(bundle: Any, readings: int = 2) -> pd.DataFrame:
    """A few consecutive, plausible readings of the bundle's first asset (mid-range of each
    sensor's physical limits from the bundle's own rules; 0.0 where a sensor has none)."""
    limits = (getattr(bundle, "rules", None) or {}).get("limits", {})

    def mid(sensor: str) -> float:
        lo, hi = (list(limits.get(sensor) or []) + [None, None])[:2]
        if lo is not None and hi is not None:
            return (float(lo) + float(hi)) / 2
        return float(lo if lo is not None else hi if hi is not None else 0.0)

    ts = pd.date_range("2024-01-01", periods=readings, freq="min")
    frame = pd.DataFrame({schema.TIMESTAMP: ts, schema.ASSET: [str(bundle.assets[0])] * readings})
    for s in bundle.sensors:
        frame[s] = mid(s)
    return frame


def smoke_test(bundle: Any) -> None:
    """Refuse a bundle that cannot score: run it on a probe before it is served.

    A hash-verified artifact can still fail at scoring time, e.g. when it was pickled by a different
    version of the feature code; better to keep serving the previous model than to answer 500s.
    """
    try:
        scored = score_readings(bundle, probe_frame(bundle))
    except ScoringFailed:
        raise
    except Exception as err:
        raise ScoringFailed(f"model cannot score a probe reading ({type(err).__name__}: {err})") from None
    if len(scored) != 2:
        raise ScoringFailed("model returned the wrong number of results for a probe")


def review_candidates(
    log_rows: pd.DataFrame, *, sensors: Sequence[str], decisions: Iterable[str], source_file: str | None
) -> list[Any]:
    """Review-queue items for the rows of one log file (one model version) that need a human."""
    from plantwatch.review import candidates_from_scored

    if log_rows.empty:
        return []
    versions = log_rows[ilog.MODEL_VERSION].unique()
    if len(versions) != 1:
        raise ValueError("review candidates are built per model version")
    threshold = log_rows[ilog.THRESHOLD].iloc[0]
    scored = log_rows.assign(
        **{TOP_SENSORS: [json.loads(t) if isinstance(t, str) else t for t in log_rows[TOP_SENSORS]]}
    )
    return candidates_from_scored(
        scored,
        model_version=str(versions[0]),
        threshold=None if pd.isna(threshold) else float(threshold),
        sensors=sensors,
        decisions=decisions,
        source_file=source_file,
    )


# --------------------------------------------------------------------------------------------
# I/O shell: `plantwatch score --input FILE --out FILE`
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreSummary:
    rows: int
    model_version: str
    decisions: dict[str, int]
    out: str
    review_items: int
    log_files: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "model_version": self.model_version,
            "decisions": self.decisions,
            "out": self.out,
            "review_items": self.review_items,
            "log_files": self.log_files,
        }


_SUFFIXES = (".csv", ".csv.gz", ".parquet")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise UsageError(f"{path}: unsupported file type (use {', '.join(_SUFFIXES)})")


def read_readings(path: Path, *, default_asset: str) -> pd.DataFrame:
    """A canonical-format file (CSV/Parquet): ``timestamp``, ``asset`` (optional) and sensor columns."""
    suffix = _suffix(path)
    if not path.is_file():
        raise UsageError(f"{path}: input file not found")
    try:
        frame = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
    except Exception as err:  # pandas/pyarrow raise many kinds on a corrupt file
        raise DataError(f"{path}: cannot read ({type(err).__name__})") from None
    if schema.TIMESTAMP not in frame.columns:
        raise InvalidReadings(f"{path}: no {schema.TIMESTAMP!r} column")
    ts = pd.to_datetime(frame[schema.TIMESTAMP], errors="coerce", utc=True, format="ISO8601")
    frame[schema.TIMESTAMP] = ts.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")
    if schema.ASSET not in frame.columns:
        frame[schema.ASSET] = default_asset
    frame[schema.ASSET] = frame[schema.ASSET].astype(str)
    return frame


def write_results(frame: pd.DataFrame, path: Path) -> None:
    """Inputs + results; ``rules``/``top_sensors`` as JSON text in CSV, native lists in Parquet."""
    suffix = _suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = frame.copy()
    out[TOP_SENSORS] = [json.dumps(ilog._plain_top(t)) for t in out[TOP_SENSORS]]
    if suffix == ".parquet":
        out[RULES] = [list(r) for r in out[RULES]]
        out.to_parquet(path, index=False)
    else:
        out[RULES] = [json.dumps(list(r)) for r in out[RULES]]
        out.to_csv(path, index=False)


def project_relative(path: Path, root: Path) -> str:
    """``path`` relative to the project root when inside it (review items stay valid if it moves)."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def score_file(
    input_path: Path,
    out_path: Path,
    *,
    bundle: Any,
    model_version: str,
    default_asset: str,
    project_root: Path,
    log_root: Path | None,
    queue: Any | None,
    review_decisions: Iterable[str],
    request_id: str,
) -> ScoreSummary:
    """Batch-score a file through the service's code path; log and enqueue like the service does."""
    _suffix(out_path)  # fail before scoring on an unsupported output type
    frame = read_readings(input_path, default_asset=default_asset)
    sensors = list(bundle.sensors)
    results = score_checked(bundle, frame)
    write_results(pd.concat([frame.reset_index(drop=True), results.reset_index(drop=True)], axis=1), out_path)
    log = ilog.build_log_frame(
        frame.reset_index(drop=True),
        results.reset_index(drop=True),
        sensors=sensors,
        request_id=request_id,
        model_version=model_version,
        threshold=getattr(bundle, "threshold_", None),
        source=ilog.SOURCE_BATCH,
        logged_at=datetime.now(UTC).replace(tzinfo=None),
    )
    decisions = list(review_decisions)
    parts = ilog.write_log(log, log_root, sensors) if log_root is not None else [(None, log)]
    n_review = 0
    for file, rows in parts:
        where = None if file is None else project_relative(file, project_root)
        items = review_candidates(rows, sensors=sensors, decisions=decisions, source_file=where)
        if queue is not None and items:
            queue.enqueue(items)
        n_review += len(items)
    counts = results[DECISION].value_counts()
    return ScoreSummary(
        rows=len(frame),
        model_version=model_version,
        decisions={d: int(counts.get(d, 0)) for d in schema.DECISIONS},
        out=str(out_path),
        review_items=n_review if queue is not None else 0,
        log_files=[project_relative(f, project_root) for f, _ in parts if f is not None],
    )
