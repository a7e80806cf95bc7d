"""Operating threshold from the alert budget, and the review band below it.

The alert budget (``train.alert_budget``) is what operators accept: at most that many false alarms
per asset per day. A false alarm is counted exactly as ``plantwatch.evaluation`` counts it (an alert
episode overlapping no labelled anomaly), so the budget set here is the one the gate checks later.

The threshold is chosen on validation rows the detector was not fitted on. Candidate thresholds are
quantiles of the NORMAL rows' scores, spaced geometrically towards the top tail (where a budget of
~1 alarm per 1,440 readings lives). Scanning from the highest candidate down, the threshold is the
lowest candidate before the budget is first exceeded. Stopping at the first violation matters:
a very low threshold can merge alerts into a few long episodes that touch a labelled anomaly and so
stop counting as false alarms, which would satisfy the budget for the wrong reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from plantwatch.errors import DataError
from plantwatch.evaluation import asset_days, false_alarm_count


class CalibrationError(DataError, ValueError):
    """The validation data cannot set a threshold. A ``DataError`` so the CLI and flows report one
    line (not a traceback) when, e.g., mislabelled data leaves no normal rows; still a ValueError."""

#: Number of candidate thresholds scanned (resolution of the search, not a decision threshold).
THRESHOLD_CANDIDATES = 256


@dataclass(frozen=True)
class Thresholds:
    """``score >= threshold`` alerts; ``review_low <= score < threshold`` goes to a person."""

    threshold: float
    review_low: float
    false_alarms_per_asset_day: float


def _candidates(normal_scores: np.ndarray, n: int) -> np.ndarray:
    """Distinct normal-score quantiles, descending, dense in the top tail."""
    tail = np.geomspace(1.0 / max(normal_scores.size, 1), 1.0, n)
    levels = np.clip(1.0 - tail, 0.0, 1.0)
    return np.unique(np.quantile(normal_scores, levels))[::-1]


def alert_threshold(
    scores: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    timestamps: np.ndarray,
    budget: float,
    episode_gap: int = 0,
    n_candidates: int = THRESHOLD_CANDIDATES,
) -> tuple[float, float]:
    """Lowest threshold whose false alarms per asset-day stay within ``budget``; returns (t, rate).

    Falls back to "just above the highest normal score" (no false alarm on this data) when even the
    top candidate breaks the budget.
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=int)
    normal = s[y == 0]
    if normal.size == 0:
        raise CalibrationError("threshold calibration needs normal rows; the validation period has none")
    days = asset_days(groups, timestamps)
    if not np.isfinite(days) or days <= 0:
        raise CalibrationError("threshold calibration needs at least two readings of one asset")
    best = float(np.nextafter(normal.max(), np.inf))
    best_rate = false_alarm_count(y, s >= best, groups, episode_gap) / days
    for t in _candidates(normal, n_candidates):
        rate = false_alarm_count(y, s >= t, groups, episode_gap) / days
        if rate > budget:
            break
        best, best_rate = float(t), rate
    return best, best_rate


def review_low(scores: np.ndarray, labels: np.ndarray, threshold: float, band: float) -> float:
    """Lower edge of the review band: ``band`` more of the normal rows go to review below the threshold.

    Expressed as a share of normal rows (not a multiple of the threshold) because score scales differ
    between detectors; the share is the review queue's expected load.
    """
    normal = np.asarray(scores, dtype=float)[np.asarray(labels, dtype=int) == 0]
    if band <= 0 or normal.size == 0:
        return float(threshold)
    below = float(np.mean(normal < threshold))
    level = max(below - band, 0.0)
    return float(min(np.quantile(normal, level), threshold))


def calibrate(
    scores: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    timestamps: np.ndarray,
    budget: float,
    band: float,
    episode_gap: int,
) -> Thresholds:
    """Alert threshold and review band from one period's scores (validation, or a CV fold's history)."""
    t, rate = alert_threshold(scores, labels, groups, timestamps, budget, episode_gap)
    low = review_low(scores, labels, t, band)
    return Thresholds(threshold=t, review_low=low, false_alarms_per_asset_day=rate)
