"""Metrics on hand-made cases whose right answers can be counted by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from plantwatch import evaluation as ev

MIN = np.timedelta64(60, "s")


def _frame(labels_a: list[int], labels_b: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two assets on a 1-minute grid; returns labels, groups, timestamps (asset-sorted)."""
    start = np.datetime64("2024-01-01T00:00:00", "ns")
    ts = np.r_[start + np.arange(len(labels_a)) * MIN, start + np.arange(len(labels_b)) * MIN]
    groups = np.array(["a"] * len(labels_a) + ["b"] * len(labels_b))
    return np.array(labels_a + labels_b), groups, ts


def test_runs_do_not_cross_assets() -> None:
    flags = np.array([0, 1, 1, 1, 1, 0, 1], dtype=bool)
    groups = np.array(["a", "a", "a", "b", "b", "b", "b"])
    assert ev.runs(flags, groups).tolist() == [[1, 3], [3, 5], [6, 7]]
    assert ev.runs(np.array([], dtype=bool), np.array([])).shape == (0, 2)


def test_event_recall_and_delay_exact() -> None:
    #        asset a: episode rows 2-4 (found at row 3), episode 7-8 (missed)
    #        asset b: episode rows 1-3 (found at row 1)
    labels, groups, ts = _frame([0, 0, 1, 1, 1, 0, 0, 1, 1, 0], [0, 1, 1, 1, 0, 0])
    alerts = np.zeros(labels.size, dtype=bool)
    alerts[[3, 4, 11]] = True  # a: rows 3,4 ; b: row 1 (index 10 + 1)
    assert ev.event_recall(labels, alerts, groups) == pytest.approx(2 / 3)
    delays = ev.detection_delays_s(labels, alerts, groups, ts)
    assert sorted(delays.tolist()) == [0.0, 60.0]


def test_alert_before_episode_does_not_count_as_detection() -> None:
    labels, groups, ts = _frame([0, 0, 1, 1], [0])
    alerts = np.array([0, 1, 0, 0, 0], dtype=bool)
    assert ev.event_recall(labels, alerts, groups) == 0.0
    assert ev.detection_delays_s(labels, alerts, groups, ts).size == 0


def test_false_alarms_per_asset_day_counts_episodes_off_labels() -> None:
    # one day per asset at 1-minute readings: 1,440 rows each -> 2 asset-days
    n = 1440
    labels = np.zeros(2 * n, dtype=int)
    labels[100:110] = 1
    groups = np.array(["a"] * n + ["b"] * n)
    start = np.datetime64("2024-01-01", "ns")
    ts = np.r_[start + np.arange(n) * MIN, start + np.arange(n) * MIN]
    alerts = np.zeros(2 * n, dtype=bool)
    alerts[95:105] = True  # overlaps the labelled episode: a detection, not a false alarm
    alerts[500:503] = True  # one false-alarm episode of three rows
    alerts[n - 1] = True  # last row of a ...
    alerts[n] = True  # ... and first row of b: two episodes, never merged across assets
    assert ev.asset_days(groups, ts) == pytest.approx(2.0)
    assert ev.false_alarm_count(labels, alerts, groups) == 3
    assert ev.false_alarms_per_asset_day(labels, alerts, groups, ts) == pytest.approx(1.5)


def test_alerts_close_together_are_one_episode() -> None:
    labels = np.array([0] * 12 + [1, 1] + [0] * 6)
    groups = np.array(["a"] * 10 + ["b"] * 10)
    alerts = np.zeros(20, dtype=bool)
    alerts[[0, 2, 5, 9, 10, 11, 16]] = True
    # gap 0: 0 | 2 | 5 | 9 (a) and 10-11 | 16 (b)
    assert ev.runs(alerts, groups).tolist() == [[0, 1], [2, 3], [5, 6], [9, 10], [10, 12], [16, 17]]
    # gap 2 (at most two quiet readings between): a: 0,2,5 merge, 9 alone (3 quiet rows); never across assets
    assert ev.runs(alerts, groups, max_gap=2).tolist() == [[0, 6], [9, 10], [10, 12], [16, 17]]
    # gap 4: a becomes one episode; b's 10-16 merge into one that overlaps the labelled rows 12-13
    assert ev.runs(alerts, groups, max_gap=4).tolist() == [[0, 10], [10, 17]]
    assert ev.false_alarm_count(labels, alerts, groups, episode_gap=0) == 6
    assert ev.false_alarm_count(labels, alerts, groups, episode_gap=4) == 1


def test_asset_days_ignores_outages() -> None:
    start = np.datetime64("2024-01-01", "ns")
    ts = np.r_[start + np.arange(720) * MIN, start + np.timedelta64(10, "D") + np.arange(720) * MIN]
    groups = np.array(["a"] * 1440)
    assert ev.asset_days(groups, ts) == pytest.approx(1.0)


def test_point_metrics_are_pointwise_not_point_adjusted() -> None:
    labels = np.array([0, 1, 1, 1, 1, 0, 0, 0])
    alerts = np.array([0, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
    m = ev.point_metrics(labels, alerts)
    # one of four anomalous points found: point-adjusted recall would claim 1.0
    assert m == pytest.approx({"precision": 0.5, "recall": 0.25, "f1": 2 * 0.5 * 0.25 / 0.75})


def test_score_metrics_keys_and_undefined_cases() -> None:
    labels, groups, ts = _frame([0, 0, 0, 0], [0, 0, 0])
    m = ev.score_metrics(labels, np.arange(7.0), groups, ts, threshold=5.0, episode_gap=0)
    assert tuple(m) == ev.METRIC_KEYS
    assert math.isnan(m["pr_auc"]) and math.isnan(m["roc_auc"]) and math.isnan(m["event_recall"])


def test_summarize_t_interval() -> None:
    s = ev.summarize([0.5, 0.6, 0.7, float("nan")], level=0.95)
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1)
    # t(0.975, df=2) = 4.302653
    assert s["ci_low"] == pytest.approx(0.6 - 4.302653 * 0.1 / math.sqrt(3), abs=1e-6)
    clipped = ev.summarize([0.1, 0.9, 0.95], level=0.95, bounds=(0.0, 1.0))
    assert clipped["ci_low"] == 0.0 and clipped["ci_high"] == 1.0
    assert ev.summarize([0.5], level=0.95)["n"] == 1 and math.isnan(ev.summarize([], level=0.95)["mean"])


def test_weighted_average_precision_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.1).astype(int)
    s = np.round(rng.normal(size=500) + y, 1)  # rounding makes ties
    w = rng.integers(0, 3, 500).astype(float)
    ranked = ev._RankedScores.of(s)
    assert ranked.average_precision(y, w) == pytest.approx(average_precision_score(y, s, sample_weight=w))
    assert ranked.average_precision(y, np.ones(500)) == pytest.approx(average_precision_score(y, s))


def test_paired_bootstrap_separates_better_from_equal() -> None:
    rng = np.random.default_rng(1)
    y = np.zeros(4000, dtype=int)
    for start in range(50, 4000, 200):
        y[start:start + 10] = 1
    good = y * 2.0 + rng.normal(size=y.size)
    noise = rng.normal(size=y.size)
    kw = {"n_resamples": 300, "n_blocks": 40, "level": 0.95, "seed": 0}
    better = ev.paired_block_bootstrap(y, good, noise, **kw)
    assert better["ci_low"] > 0.2
    same = ev.paired_block_bootstrap(y, good, good, **kw)
    assert same["diff"] == 0.0 and same["ci_low"] == 0.0 and same["ci_high"] == 0.0
    worse = ev.paired_block_bootstrap(y, noise, good, **kw)
    assert worse["ci_high"] < 0


def test_pr_curve_is_thinned() -> None:
    rng = np.random.default_rng(2)
    y = (rng.random(2000) < 0.2).astype(int)
    curve = ev.pr_curve(y, rng.normal(size=2000) + y, max_points=50)
    assert len(curve) <= 50 and list(curve.columns) == ["recall", "precision", "threshold"]
    assert ev.pr_curve(np.zeros(5, dtype=int), np.arange(5.0), max_points=50).empty


def test_timestamps_accept_pandas_series() -> None:
    labels, groups, ts = _frame([0, 1, 1], [1, 0])
    alerts = np.array([0, 0, 1, 1, 0], dtype=bool)
    delays = ev.detection_delays_s(labels, alerts, groups, pd.Series(ts))
    assert delays.tolist() == [60.0, 0.0]
