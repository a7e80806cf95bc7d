"""The alert threshold keeps false alarms within the budget, measured the way the gate measures them."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import lfilter

from plantwatch import evaluation as ev
from plantwatch import thresholds as th


def _period(days: int, assets: int, seed: int, with_anomalies: bool) -> dict[str, np.ndarray]:
    """Autocorrelated normal scores (AR(1), like a rolling-window detector's) + a few episodes."""
    rng = np.random.default_rng(seed)
    n = days * 1440
    scores, labels = [], []
    for _ in range(assets):
        s = lfilter([np.sqrt(1 - 0.81)], [1.0, -0.9], rng.normal(size=n))
        y = np.zeros(n, dtype=int)
        if with_anomalies:
            for start in rng.choice(n - 60, size=3, replace=False):
                y[start:start + 30] = 1
                s[start:start + 30] += 4.0
        scores.append(s)
        labels.append(y)
    start = np.datetime64("2024-01-01", "ns")
    ts = np.concatenate([start + np.arange(n) * np.timedelta64(60, "s")] * assets)
    groups = np.repeat([f"a{i}" for i in range(assets)], n)
    return {"scores": np.concatenate(scores), "labels": np.concatenate(labels), "groups": groups, "ts": ts}


@pytest.mark.parametrize("budget", [0.5, 2.0, 5.0])
def test_threshold_meets_budget_on_calibration_data(budget: float) -> None:
    p = _period(days=3, assets=4, seed=0, with_anomalies=True)
    t, rate = th.alert_threshold(p["scores"], p["labels"], p["groups"], p["ts"], budget)
    measured = ev.false_alarms_per_asset_day(p["labels"], p["scores"] >= t, p["groups"], p["ts"])
    assert measured == pytest.approx(rate)
    assert measured <= budget
    # and not needlessly high: the next lower candidate threshold breaks the budget
    candidates = th._candidates(p["scores"][p["labels"] == 0], th.THRESHOLD_CANDIDATES)
    lower = candidates[candidates < t][0]
    assert ev.false_alarms_per_asset_day(p["labels"], p["scores"] >= lower, p["groups"], p["ts"]) > budget


def test_larger_budget_gives_lower_threshold() -> None:
    p = _period(days=3, assets=4, seed=1, with_anomalies=True)
    t_strict, _ = th.alert_threshold(p["scores"], p["labels"], p["groups"], p["ts"], 0.5)
    t_loose, _ = th.alert_threshold(p["scores"], p["labels"], p["groups"], p["ts"], 5.0)
    assert t_loose < t_strict


def test_threshold_generalises_to_fresh_period() -> None:
    """Set on one period, the rate on a new period from the same process stays near the budget."""
    budget = 2.0
    cal = _period(days=4, assets=4, seed=2, with_anomalies=False)
    t, _ = th.alert_threshold(cal["scores"], cal["labels"], cal["groups"], cal["ts"], budget)
    new = _period(days=4, assets=4, seed=3, with_anomalies=False)
    rate = ev.false_alarms_per_asset_day(new["labels"], new["scores"] >= t, new["groups"], new["ts"])
    assert rate <= 2 * budget


def test_review_band_share_of_normal_rows() -> None:
    p = _period(days=2, assets=2, seed=4, with_anomalies=True)
    cal = th.calibrate(p["scores"], p["labels"], p["groups"], p["ts"], budget=1.0, band=0.01, episode_gap=5)
    normal = p["scores"][p["labels"] == 0]
    in_band = np.mean((normal >= cal.review_low) & (normal < cal.threshold))
    assert cal.review_low < cal.threshold
    assert in_band == pytest.approx(0.01, abs=0.001)
    assert th.review_low(p["scores"], p["labels"], cal.threshold, 0.0) == cal.threshold


def test_no_normal_rows_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="normal rows"):
        th.alert_threshold(np.ones(3), np.ones(3, dtype=int), np.array(["a"] * 3),
                           np.arange(3).astype("datetime64[m]"), 1.0)
