"""Drift core and policy: calibrated verdicts on seeded frames, k-of-m, cooldown, guard, state."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from plantwatch.config.monitor import ColumnDriftConfig, GuardConfig, MonitorConfig
from plantwatch.drift import (
    STATUS_DECIDED,
    BatchStats,
    DriftResult,
    PolicyState,
    batch_stats,
    check_drift,
    decide,
    finish_retrain,
    match_reference,
    start_guard,
)
from plantwatch.errors import ConfigError, UsageError

SENSORS = ["temperature", "vibration", "pressure"]
INTERVAL_S = 300  # 5-minute readings keep the frames small: 288 per asset-day
ASSETS = 3
BUDGET = 1.0
WEEKEND_DROP = 0.8  # weekend readings sit this many sd lower (like a plant at lower load)


def fleet(days: float, seed: int, start: str = "2024-01-01", shift: float = 0.0) -> pd.DataFrame:
    """Seeded canonical frame with per-asset levels, a daily cycle and a lower weekend level."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range(start, periods=int(days * 86_400 / INTERVAL_S), freq=f"{INTERVAL_S}s")
    hour = ts.hour.to_numpy() + ts.minute.to_numpy() / 60
    weekend = ts.dayofweek.isin([5, 6]).astype(float)
    parts = []
    for a in range(ASSETS):
        cols = {"timestamp": ts, "asset": f"pump-{a}"}
        for i, s in enumerate(SENSORS):
            cycle = np.sin(2 * np.pi * (hour - 3 * i) / 24) - WEEKEND_DROP * weekend
            cols[s] = 10.0 * (i + 1) + 2.0 * a + cycle + 0.5 * rng.standard_normal(len(ts)) + shift
        parts.append(pd.DataFrame(cols))
    return pd.concat(parts, ignore_index=True)


def scored(frame: pd.DataFrame, seed: int, alerts_per_asset_day: float = 0.0) -> pd.DataFrame:
    """Add score/decision/model_version columns like the inference log has (alerts as separate events)."""
    rng = np.random.default_rng(seed)
    out = frame.copy()
    out["score"] = rng.random(len(out))
    n_alerts = int(round(alerts_per_asset_day * len(out) * INTERVAL_S / 86_400))
    out["decision"] = "normal"
    spread = np.linspace(0, len(out) - 1, n_alerts).astype(int) if n_alerts else np.array([], dtype=int)
    out.loc[out.index[spread], "decision"] = "alert"
    out["model_version"] = "v1"
    return out


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return fleet(14, seed=0)  # two full weeks: every weekday/weekend hour is present


@pytest.fixture()
def cfg() -> MonitorConfig:
    return MonitorConfig(k=2, m=3, cooldown_batches=5, retrain_timeout_batches=50)


def result(drift: bool | None) -> DriftResult:
    """A decided (or, for None, insufficient) drift result for policy tests."""
    if drift is None:
        return DriftResult("insufficient data", "too small", None, None, {})
    return DriftResult(STATUS_DECIDED, "test", drift, 1.0 if drift else 0.0, {})


def stats(
    alerts: float | None = None, quantiles: dict[str, float] | None = None, version: str = "v1"
) -> BatchStats:
    return BatchStats(
        rows=1000,
        assets=ASSETS,
        start=None,
        end=None,
        span_hours=24.0,
        asset_days=3.0,
        alerts_per_asset_day=alerts,
        reviews_per_asset_day=0.0 if alerts is not None else None,
        score_quantiles=quantiles or {},
        model_versions=[version],
    )


def run(state: PolicyState, drifts: list[bool | None], cfg: MonitorConfig, finish: bool = False) -> tuple:
    decisions = []
    for i, d in enumerate(drifts):
        decision, state = decide(state, f"b{len(state.seen_batches)}-{i}", result(d), stats(), cfg, BUDGET)
        decisions.append(decision)
        if finish and decision.retrain == "triggered":
            state = finish_retrain(state)  # an instant retrain: only the cooldown can hold the next one
    return decisions, state


# ------------------------------------------------------------------------------------- drift core
def test_same_distribution_daily_batches_trigger_no_retrain(
    reference: pd.DataFrame, cfg: MonitorConfig
) -> None:
    state = PolicyState()
    # 2024-01-19 is a Friday: the stream covers weekdays and a weekend, which differs from the
    # average reference by WEEKEND_DROP sd and must not be taken for drift.
    for day in range(5):
        batch = fleet(1, seed=100 + day, start=str(pd.Timestamp("2024-01-19") + pd.Timedelta(days=day)))
        check = check_drift(reference, batch, SENSORS, cfg, interval_s=INTERVAL_S, alert_budget=BUDGET)
        assert check.result.drift is False, check.result.reason
        assert max(c.score for c in check.result.sensors.values()) < cfg.default.threshold / 2
        decision, state = decide(state, f"day{day}", check.result, check.stats, cfg, BUDGET)
        assert decision.retrain == "not needed"
    assert state.retrains_triggered == 0 and state.decided_batches == 5


def test_drifted_batch_stream_triggers_exactly_one_retrain(
    reference: pd.DataFrame, cfg: MonitorConfig
) -> None:
    state, outcomes = PolicyState(), []
    for day in range(4):
        batch = fleet(1, seed=200 + day, start=f"2024-01-{16 + day}", shift=0.6)  # ~0.5 sd regime change
        check = check_drift(reference, batch, SENSORS, cfg, interval_s=INTERVAL_S, alert_budget=BUDGET)
        assert check.result.drift is True and check.result.drifted_sensors == SENSORS
        decision, state = decide(state, f"drift{day}", check.result, check.stats, cfg, BUDGET)
        outcomes.append(decision.retrain)
    assert outcomes == ["not needed", "triggered", "cooling down", "cooling down"]
    assert state.retrains_triggered == 1 and state.retrain_in_progress
    assert state.retrain_request is not None and state.retrain_request.drifted_sensors == SENSORS


def test_insufficient_batches_make_no_decision(reference: pd.DataFrame, cfg: MonitorConfig) -> None:
    short = fleet(0.25, seed=3, start="2024-01-16")  # 6 hours: rows enough, daily cycle not covered
    check = check_drift(reference, short, SENSORS, cfg, interval_s=INTERVAL_S, alert_budget=BUDGET)
    assert check.result.status == "insufficient data" and check.result.drift is None
    assert "min_batch_hours" in check.result.reason and check.result.sensors == {}
    few = MonitorConfig(min_batch_rows=2000, max_rows=20_000)
    small = check_drift(
        reference,
        fleet(1, seed=4, start="2024-01-16"),
        SENSORS,
        few,
        interval_s=INTERVAL_S,
        alert_budget=BUDGET,
    )
    assert small.result.drift is None and "min_batch_rows 2000" in small.result.reason

    state = PolicyState(history=[True], decided_batches=4)
    decision, new = decide(state, "short", check.result, check.stats, cfg, BUDGET)
    assert decision.retrain == "insufficient data"
    assert new.history == [True] and new.decided_batches == 4 and new.seen_batches == ["short"]


def test_weekend_batch_is_clean_only_against_a_matched_reference(reference: pd.DataFrame) -> None:
    saturday = fleet(1, seed=5, start="2024-01-20")
    matched = MonitorConfig()
    unmatched = MonitorConfig(match_on=[])
    ok = check_drift(reference, saturday, SENSORS, matched, interval_s=INTERVAL_S, alert_budget=BUDGET)
    bad = check_drift(reference, saturday, SENSORS, unmatched, interval_s=INTERVAL_S, alert_budget=BUDGET)
    assert ok.result.drift is False and ok.result.matched_on == ["asset", "hour", "weekend"]
    assert bad.result.drift is True  # the reason the reference is matched


def test_match_reference_reproduces_the_batch_mix(reference: pd.DataFrame) -> None:
    cfg = MonitorConfig()
    batch = fleet(1, seed=6, start="2024-01-20 12:00")  # Saturday noon to Sunday noon
    batch = batch[batch["asset"] != "pump-2"]
    m = match_reference(reference, batch, cfg)
    assert set(m.frame["asset"]) == {"pump-0", "pump-1"}
    assert m.frame["timestamp"].dt.dayofweek.isin([5, 6]).all()
    hours = m.frame["timestamp"].dt.hour.value_counts(normalize=True)
    assert np.allclose(hours.to_numpy(), 1 / 24, atol=0.002)

    no_weekend = reference[~reference["timestamp"].dt.dayofweek.isin([5, 6])]
    fallback = match_reference(no_weekend, batch, cfg)
    assert fallback.keys == ("asset", "hour") and fallback.note is not None and "weekend" in fallback.note


def test_effect_size_ignores_a_harmless_shift_on_a_big_batch(reference: pd.DataFrame) -> None:
    # +0.2 units is ~0.1 sd of each sensor: KS calls that drift once a batch has thousands of rows,
    # the effect-size test (normed Wasserstein >= 0.3 sd) does not, however big the batch.
    batch = fleet(8, seed=7, start="2024-01-15", shift=0.2)
    check = check_drift(
        reference, batch, SENSORS, MonitorConfig(max_rows=3000), interval_s=INTERVAL_S, alert_budget=BUDGET
    )
    assert check.result.drift is False and check.result.rows_compared == 3000
    assert all(0.05 < c.score < 0.2 for c in check.result.sensors.values())
    ks = MonitorConfig(default=ColumnDriftConfig(method="ks", threshold=0.05))
    assert check_drift(reference, batch, SENSORS, ks, interval_s=INTERVAL_S, alert_budget=BUDGET).result.drift


def test_score_drift_and_batch_aggregates(reference: pd.DataFrame) -> None:
    ref = scored(reference, seed=8)
    batch = scored(fleet(1, seed=9, start="2024-01-16"), seed=9, alerts_per_asset_day=2.0)
    batch["score"] = batch["score"] + 0.5  # the model's scores moved, sensors did not
    check = check_drift(ref, batch, SENSORS, MonitorConfig(), interval_s=INTERVAL_S, alert_budget=BUDGET)
    assert check.result.drift is False
    assert check.result.score is not None and check.result.score.drifted
    assert check.stats.alerts_per_asset_day == pytest.approx(2.0, rel=0.01)
    assert set(check.stats.score_quantiles) == {"0.5", "0.9", "0.99"}


def test_batch_stats_counts_alerts_per_asset_day() -> None:
    batch = scored(fleet(2, seed=10), seed=10, alerts_per_asset_day=3.0)
    s = batch_stats(batch, INTERVAL_S, [0.5, 0.99])
    assert s.asset_days == pytest.approx(2 * ASSETS)
    assert s.alerts_per_asset_day == pytest.approx(3.0, rel=0.01)
    assert s.span_hours == pytest.approx(48.0)


def test_bad_inputs_are_clear_errors(reference: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="unknown sensor"):
        check_drift(
            reference,
            reference,
            SENSORS,
            MonitorConfig(sensors={"nope": ColumnDriftConfig()}),
            interval_s=INTERVAL_S,
            alert_budget=BUDGET,
        )
    with pytest.raises(Exception, match="lacks sensor"):
        check_drift(
            reference,
            reference.drop(columns=["pressure"]),
            SENSORS,
            MonitorConfig(),
            interval_s=INTERVAL_S,
            alert_budget=BUDGET,
        )
    with pytest.raises(ValueError, match="k"):
        MonitorConfig(k=4, m=3)


# ------------------------------------------------------------------------------------------ policy
def test_cooldown_holds_under_a_burst_of_ten_drifted_batches() -> None:
    cfg = MonitorConfig(k=2, m=3, cooldown_batches=10)
    decisions, state = run(PolicyState(), [True] * 10, cfg, finish=True)
    retrains = [d.retrain for d in decisions]
    assert retrains.count("triggered") == 1 and retrains[1] == "triggered"
    assert set(retrains[2:]) == {"cooling down"} and "cooldown 10" in decisions[-1].reason
    # the cooldown was what held it: once it expires, persisting drift triggers again
    more, state = run(state, [True] * 2, cfg, finish=True)
    assert [d.retrain for d in more] == ["cooling down", "triggered"]
    assert state.retrains_triggered == 2


def test_retrain_in_progress_blocks_a_second_trigger() -> None:
    cfg = MonitorConfig(k=1, m=1, cooldown_batches=1, retrain_timeout_batches=3)
    decisions, state = run(PolicyState(), [True, True, True], cfg)
    assert [d.retrain for d in decisions] == ["triggered", "cooling down", "cooling down"]
    assert "in progress" in decisions[1].reason
    decisions, state = run(finish_retrain(state), [True], cfg)
    assert decisions[0].retrain == "triggered"
    # a request nobody finishes is presumed lost after retrain_timeout_batches
    decisions, state = run(state, [False] * 4, cfg)
    assert not state.retrain_in_progress and any("presumed lost" in n for d in decisions for n in d.notes)


def test_single_drifted_batches_do_not_act(cfg: MonitorConfig) -> None:
    decisions, state = run(PolicyState(), [True, False, False, True, False, False, True], cfg)
    assert {d.retrain for d in decisions} == {"not needed"}


def test_same_batch_is_refused_twice(cfg: MonitorConfig) -> None:
    _, state = decide(PolicyState(), "b1", result(False), stats(), cfg, BUDGET)
    with pytest.raises(UsageError, match="already monitored"):
        decide(state, "b1", result(False), stats(), cfg, BUDGET)


def test_state_is_serialisable(cfg: MonitorConfig) -> None:
    _, state = run(PolicyState(), [True, True], cfg)
    state = start_guard(state, "v2", {"0.5": 0.1, "0.9": 0.3, "0.99": 0.6}, cfg)
    again = PolicyState.model_validate_json(state.model_dump_json())
    assert again == state and again.guard is not None and again.guard.model_version == "v2"
    assert again.history == [] and not again.retrain_in_progress  # promotion ends the retrain


# ------------------------------------------------------------------------------------------- guard
REF_Q = {"0.5": 0.2, "0.9": 0.4, "0.99": 0.6}


def test_guard_rolls_back_on_alert_rate_breach() -> None:
    cfg = MonitorConfig(guard=GuardConfig(batches=3, alert_rate_factor=3.0))
    state = start_guard(PolicyState(), "v2", REF_Q, cfg)
    d1, state = decide(
        state, "g1", result(False), stats(alerts=2.5, quantiles=REF_Q, version="v2"), cfg, BUDGET
    )
    assert not d1.rollback and state.guard is not None and state.guard.batches_left == 2
    d2, state = decide(
        state, "g2", result(False), stats(alerts=3.5, quantiles=REF_Q, version="v2"), cfg, BUDGET
    )
    assert d2.rollback and "alert rate 3.50" in (d2.rollback_reason or "")
    assert state.guard is None and state.rollbacks == 1


def test_guard_rolls_back_on_score_quantile_jump() -> None:
    cfg = MonitorConfig(guard=GuardConfig(batches=3, max_quantile_shift=1.0))
    state = start_guard(PolicyState(), "v2", REF_Q, cfg)
    jumped = {"0.5": 0.75, "0.9": 0.9, "0.99": 0.95}  # median moved 0.55 / 0.4 spread = 1.4 spreads
    d, state = decide(
        state, "g1", result(False), stats(alerts=0.5, quantiles=jumped, version="v2"), cfg, BUDGET
    )
    assert d.rollback and "quantile 0.5" in (d.rollback_reason or "")


def test_guard_passes_after_n_healthy_batches_and_ignores_other_versions() -> None:
    cfg = MonitorConfig(guard=GuardConfig(batches=2))
    state = start_guard(PolicyState(), "v2", REF_Q, cfg)
    d, state = decide(
        state, "old", result(False), stats(alerts=50.0, quantiles=REF_Q, version="v1"), cfg, BUDGET
    )
    assert not d.rollback and state.guard is not None and state.guard.batches_left == 2
    for i in range(2):
        d, state = decide(
            state, f"ok{i}", result(False), stats(alerts=1.0, quantiles=REF_Q, version="v2"), cfg, BUDGET
        )
        assert not d.rollback
    assert state.guard is None and d.guard.startswith("passed")


def test_alert_rate_counts_alert_episodes_like_the_budget() -> None:
    """A 10-reading alert run is one alert (one operator page), as in the alert budget's definition."""
    batch = scored(fleet(1, seed=11), seed=11, alerts_per_asset_day=0.0)
    first = batch.index[batch["asset"] == batch["asset"].iloc[0]][:200]
    batch.loc[first[100:110], "decision"] = "alert"
    batch.loc[first[150], "decision"] = "alert"
    s = batch_stats(batch, INTERVAL_S, [0.5], episode_gap=0)
    assert s.alerts_per_asset_day == pytest.approx(2 / s.asset_days)
    merged = batch_stats(batch, INTERVAL_S, [0.5], episode_gap=60)
    assert merged.alerts_per_asset_day == pytest.approx(1 / s.asset_days)
