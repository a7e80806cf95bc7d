"""Anomaly-detection metrics, pure functions on arrays (no files, no params).

Conventions, fixed here once and used by threshold setting (``thresholds.py``), evaluation and gates:

* Rows are ordered by (asset, timestamp), as in the canonical frame. ``groups`` is the asset column.
* A *labelled episode* is a maximal run of consecutive ``label == 1`` rows of one asset.
* An *alert episode* is a maximal run of alerting rows of one asset, where alerts with at most
  ``train.episode_gap`` quiet readings between them belong to the same episode (a flickering
  excursion pages an operator once, not every time the score dips under the threshold for a minute).
* A *false alarm* is an alert episode that does not overlap any labelled anomalous row. Counting
  episodes rather than rows matches what an operator sees (one page per excursion), and it is the
  quantity the alert budget (max false alarms per asset per day) is stated in.
* Precision, recall and F1 are POINT-WISE at the operating threshold. Point-adjusted scores (a whole
  episode counted as found once any of its points is) inflate results badly and are never used.
* Higher score = more anomalous (``plantwatch.schema.HIGHER_IS_MORE_ANOMALOUS``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)

from plantwatch.schema import ASSET, LABEL, TIMESTAMP

#: Keys of one candidate's metric dict, in report order (metrics/holdout.json, metrics/cv.json).
METRIC_KEYS: tuple[str, ...] = (
    "pr_auc",
    "roc_auc",
    "precision",
    "recall",
    "f1",
    "event_recall",
    "detection_delay_s",
    "false_alarms_per_asset_day",
)
#: Range each metric can take; CV intervals are clipped to it (a PR-AUC interval below 0 says nothing).
METRIC_RANGES: dict[str, tuple[float, float]] = {
    **{k: (0.0, 1.0) for k in ("pr_auc", "roc_auc", "precision", "recall", "f1", "event_recall")},
    "detection_delay_s": (0.0, math.inf),
    "false_alarms_per_asset_day": (0.0, math.inf),
}
_SECONDS_PER_DAY = 86_400.0


def frame_arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, assets, timestamps) of a canonical frame; no label column = all normal."""
    if LABEL in frame.columns:
        labels = frame[LABEL].fillna(0).to_numpy().astype(int)
    else:
        labels = np.zeros(len(frame), dtype=int)
    return labels, frame[ASSET].astype(str).to_numpy(), frame[TIMESTAMP].to_numpy()


def epoch_ns(timestamps: np.ndarray | pd.Series) -> np.ndarray:
    """Timestamps as int64 nanoseconds (tz-naive UTC), without pandas' slow per-element parsing path."""
    return np.asarray(timestamps, dtype="datetime64[ns]").astype(np.int64)


def runs(flags: np.ndarray, groups: np.ndarray, max_gap: int = 0) -> np.ndarray:
    """Maximal runs of True per group as an ``(n, 2)`` array of ``[start, end)`` row positions.

    A run never crosses a change of group, so two assets' anomalies are never merged. Runs of one
    group separated by at most ``max_gap`` False rows are merged into one (the gap rows included).
    """
    f = np.asarray(flags, dtype=bool)
    if f.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    codes = pd.factorize(np.asarray(groups))[0]
    same_as_prev = np.r_[False, codes[1:] == codes[:-1]]
    continues = np.r_[False, f[:-1]] & same_as_prev
    starts = np.flatnonzero(f & ~continues)
    carries_on = np.r_[f[1:] & same_as_prev[1:], False]
    ends = np.flatnonzero(f & ~carries_on) + 1
    if max_gap > 0 and starts.size > 1:
        join = (codes[starts[1:]] == codes[starts[:-1]]) & (starts[1:] - ends[:-1] <= max_gap)
        starts, ends = starts[np.r_[True, ~join]], ends[np.r_[~join, True]]
    return np.column_stack([starts, ends]).astype(np.int64)


def _hits(flags: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Number of True flags inside each ``[start, end)`` span (prefix sums: O(n + spans))."""
    csum = np.r_[0, np.cumsum(np.asarray(flags, dtype=np.int64))]
    return csum[spans[:, 1]] - csum[spans[:, 0]]


def asset_days(groups: np.ndarray, timestamps: np.ndarray) -> float:
    """Monitored time in asset-days: per asset, readings × that asset's median sampling interval.

    Readings × interval (rather than first-to-last span) does not count outages as monitored time.
    """
    frame = pd.DataFrame({"g": np.asarray(groups), "t": epoch_ns(timestamps) / 1e9})
    steps = frame.groupby("g", sort=False)["t"].diff()
    overall = float(steps.median()) if steps.notna().any() else math.nan
    per_asset = steps.groupby(frame["g"], sort=False).median().fillna(overall)
    counts = frame.groupby("g", sort=False).size()
    total = float((counts * per_asset.reindex(counts.index)).sum())
    return total / _SECONDS_PER_DAY if math.isfinite(total) else math.nan


def false_alarm_count(
    labels: np.ndarray, alerts: np.ndarray, groups: np.ndarray, episode_gap: int = 0
) -> int:
    """Alert episodes (alerts with at most ``episode_gap`` quiet readings between them merged) that
    overlap no labelled anomalous row."""
    spans = runs(alerts, groups, episode_gap)
    if len(spans) == 0:
        return 0
    return int(np.sum(_hits(labels, spans) == 0))


def false_alarms_per_asset_day(
    labels: np.ndarray, alerts: np.ndarray, groups: np.ndarray, timestamps: np.ndarray, episode_gap: int = 0
) -> float:
    days = asset_days(groups, timestamps)
    if not days or not math.isfinite(days):
        return math.nan
    return false_alarm_count(labels, alerts, groups, episode_gap) / days


def event_recall(labels: np.ndarray, alerts: np.ndarray, groups: np.ndarray) -> float:
    """Share of labelled episodes with at least one alert inside them (NaN without episodes)."""
    episodes = runs(labels, groups)
    if len(episodes) == 0:
        return math.nan
    return float(np.mean(_hits(alerts, episodes) > 0))


def detection_delays_s(
    labels: np.ndarray, alerts: np.ndarray, groups: np.ndarray, timestamps: np.ndarray
) -> np.ndarray:
    """Seconds from each DETECTED episode's first row to its first alert inside the episode."""
    episodes = runs(labels, groups)
    alert_pos = np.flatnonzero(np.asarray(alerts, dtype=bool))
    if len(episodes) == 0 or alert_pos.size == 0:
        return np.empty(0, dtype=float)
    nxt = np.searchsorted(alert_pos, episodes[:, 0])
    inside = nxt < alert_pos.size
    first = np.where(inside, alert_pos[np.minimum(nxt, alert_pos.size - 1)], -1)
    detected = inside & (first < episodes[:, 1])
    ts = epoch_ns(timestamps)
    return (ts[first[detected]] - ts[episodes[detected, 0]]) / 1e9


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision; NaN when there is no positive (undefined, never silently 0)."""
    y = np.asarray(labels, dtype=int)
    if y.sum() == 0:
        return math.nan
    return float(average_precision_score(y, scores))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    y = np.asarray(labels, dtype=int)
    if y.min(initial=0) == y.max(initial=0):
        return math.nan
    return float(roc_auc_score(y, scores))


def point_metrics(labels: np.ndarray, alerts: np.ndarray) -> dict[str, float]:
    """Point-wise precision, recall and F1 of the alert decisions (0 when undefined)."""
    p, r, f, _ = precision_recall_fscore_support(
        np.asarray(labels, dtype=int), np.asarray(alerts, dtype=int),
        average="binary", pos_label=1, zero_division=0,
    )
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


def score_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: np.ndarray,
    timestamps: np.ndarray,
    threshold: float,
    episode_gap: int,
) -> dict[str, float]:
    """Every metric in ``METRIC_KEYS`` for one scored period at one operating threshold."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    alerts = s >= threshold
    delays = detection_delays_s(y, alerts, groups, timestamps)
    out = {
        "pr_auc": pr_auc(y, s),
        "roc_auc": roc_auc(y, s),
        **point_metrics(y, alerts),
        "event_recall": event_recall(y, alerts, groups),
        "detection_delay_s": float(delays.mean()) if delays.size else math.nan,
        "false_alarms_per_asset_day": false_alarms_per_asset_day(y, alerts, groups, timestamps, episode_gap),
    }
    return {k: out[k] for k in METRIC_KEYS}


def summarize(
    values: list[float] | np.ndarray, level: float, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> dict[str, float]:
    """Mean, std (ddof=1) and a Student-t interval at ``level`` over CV folds (NaN folds dropped).

    The t-interval is used rather than a bootstrap because 5-10 folds are too few to resample; it is
    clipped to the metric's ``bounds``.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    mean = float(v.mean())
    if v.size == 1:
        return {"mean": mean, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 1}
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, df=v.size - 1)) * std / math.sqrt(v.size)
    low, high = max(mean - half, bounds[0]), min(mean + half, bounds[1])
    return {"mean": mean, "std": std, "ci_low": low, "ci_high": high, "n": int(v.size)}


@dataclass(frozen=True)
class RankedScores:
    """Scores sorted once (descending) so average precision under many weightings is cheap (the
    paired bootstraps here and in ``plantwatch.gating``)."""

    order: np.ndarray
    tie_ends: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray) -> RankedScores:
        s = np.asarray(scores, dtype=float)
        order = np.argsort(-s, kind="mergesort")
        ranked = s[order]
        tie_ends = np.r_[np.flatnonzero(np.diff(ranked) != 0), ranked.size - 1]
        return cls(order=order, tie_ends=tie_ends)

    def average_precision(self, labels: np.ndarray, weights: np.ndarray) -> float:
        """sklearn's average precision with sample weights (step-wise, ties as one threshold)."""
        y = labels[self.order].astype(float)
        w = weights[self.order]
        tp = np.cumsum(w * y)[self.tie_ends]
        fp = np.cumsum(w * (1.0 - y))[self.tie_ends]
        if tp[-1] <= 0:
            return math.nan
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
        recall = tp / tp[-1]
        return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


#: The old private name, kept for existing callers (tests/unit/test_evaluation.py); use ``RankedScores``.
_RankedScores = RankedScores


def paired_block_bootstrap(
    labels: np.ndarray,
    scores_new: np.ndarray,
    scores_old: np.ndarray,
    *,
    n_resamples: int,
    n_blocks: int,
    level: float,
    seed: int,
) -> dict[str, float]:
    """PR-AUC(new) − PR-AUC(old) on the same rows, with a paired moving-block bootstrap interval.

    Rows are cut into ``n_blocks`` contiguous blocks (in asset/time order) and whole blocks are
    resampled, because neighbouring readings and their labels are strongly correlated: resampling
    single rows would make the interval far too narrow. Both models see the same resample (paired),
    so shared difficulty cancels out of the difference.
    """
    y = np.asarray(labels, dtype=int)
    if y.size == 0 or y.sum() == 0:
        return {"diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n_resamples": 0}
    new, old = RankedScores.of(scores_new), RankedScores.of(scores_old)
    ones = np.ones(y.size)
    diff = new.average_precision(y, ones) - old.average_precision(y, ones)
    block_of_row = np.minimum((np.arange(y.size) * n_blocks) // y.size, n_blocks - 1)
    n_used = int(block_of_row.max()) + 1
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_resamples)
    for i in range(n_resamples):
        counts = np.bincount(rng.integers(0, n_used, n_used), minlength=n_used).astype(float)
        w = counts[block_of_row]
        diffs[i] = new.average_precision(y, w) - old.average_precision(y, w)
    diffs = diffs[np.isfinite(diffs)]
    alpha = (1.0 - level) / 2
    low, high = (np.quantile(diffs, [alpha, 1 - alpha]) if diffs.size else (math.nan, math.nan))
    return {"diff": float(diff), "ci_low": float(low), "ci_high": float(high), "n_resamples": int(diffs.size)}


def pr_curve(labels: np.ndarray, scores: np.ndarray, max_points: int) -> pd.DataFrame:
    """Precision/recall pairs for a DVC plot, thinned to at most ``max_points`` rows."""
    y = np.asarray(labels, dtype=int)
    if y.sum() == 0:
        return pd.DataFrame({"recall": [], "precision": [], "threshold": []})
    precision, recall, thr = precision_recall_curve(y, scores)
    frame = pd.DataFrame({"recall": recall[:-1], "precision": precision[:-1], "threshold": thr})
    if len(frame) > max_points:
        keep = np.unique(np.linspace(0, len(frame) - 1, max_points).round().astype(int))
        frame = frame.iloc[keep]
    return frame.reset_index(drop=True)
