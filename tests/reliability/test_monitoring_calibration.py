"""Monitoring calibration: the real drift check (``plantwatch.drift.check_drift``, Evidently, with
params.yaml's monitor block) and the real policy (``plantwatch.drift.decide``).

* 200 same-distribution daily batches (one simulated pump; the reference is the features stage's
  train part of its first two weeks): false alarms <= 1 %, and no retrain triggered;
* then a burst of 10 regime-drift batches: exactly one retrain, the rest "cooling down".

Bounded in count (210 checks) and in time (``MAX_SECONDS``; about 1 s per Evidently check here).
The checks are independent, so they run in ``WORKERS`` spawned processes (``drift_pool``); the
policy, which carries state from batch to batch, then runs over the results in batch order.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from plantwatch import schema
from plantwatch.config import load_params
from plantwatch.drift import PolicyState, decide
from plantwatch.features import time_split
from plantwatch.simulate import simulate_fleet
from tests.reliability.conftest import record_figure
from tests.reliability.drift_pool import check_batches

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NORMAL_BATCHES = 200
DRIFT_BATCHES = 10
#: As the pipeline does: the reference is the train part of ``simulate.days`` (14) days, so it holds
#: weekends too (a reference without any weekend cannot be matched to a weekend batch).
REFERENCE_DAYS = 14
MAX_FALSE_ALARM_RATE = 0.01
MAX_SECONDS = 420.0
#: Processes running the Evidently checks (the machine has 2 cores).
WORKERS = 2
SEED = 21
DAY = pd.Timedelta(days=1)


def _days(frame: pd.DataFrame, start: pd.Timestamp, count: int) -> list[pd.DataFrame]:
    ts = frame[schema.TIMESTAMP]
    return [frame[(ts >= start + i * DAY) & (ts < start + (i + 1) * DAY)] for i in range(count)]


def test_false_alarms_and_one_retrain_per_drift_burst() -> None:
    params = load_params(REPO / "params.yaml")
    cfg, sensors, budget = params.monitor, params.data.sensor_names, params.train.alert_budget
    assert cfg.cooldown_batches >= DRIFT_BATCHES  # the burst fits inside one cooldown
    days = REFERENCE_DAYS + NORMAL_BATCHES
    full = simulate_fleet(params.simulate, params.data, seed=SEED, assets=1, days=days)
    start = full[schema.TIMESTAMP].min() + pd.Timedelta(days=REFERENCE_DAYS)
    reference = time_split(full[full[schema.TIMESTAMP] < start], params.split).train
    end = start + NORMAL_BATCHES * DAY
    drifted = simulate_fleet(params.simulate, params.data, scenario="drift", seed=SEED, assets=1, start=end,
                             days=DRIFT_BATCHES)  # fmt: skip
    stream = [("normal", b) for b in _days(full, start, NORMAL_BATCHES)]
    stream += [("drift", b) for b in _days(drifted, end, DRIFT_BATCHES)]
    assert all(len(b) >= cfg.min_batch_rows for _, b in stream)

    state = PolicyState()
    verdicts: dict[str, list[bool]] = {"normal": [], "drift": []}
    retrain: dict[str, Counter[str]] = {"normal": Counter(), "drift": Counter()}
    t0 = time.monotonic()
    batches = [(f"{kind}-{i}", b) for i, (kind, b) in enumerate(stream)]
    checks = check_batches(reference, batches, sensors, cfg, interval_s=params.data.interval_s,
                           alert_budget=budget, workers=WORKERS, timeout_s=MAX_SECONDS)  # fmt: skip
    took = time.monotonic() - t0
    assert [c.batch_id for c in checks] == [batch_id for batch_id, _ in batches]
    for (kind, _), check in zip(stream, checks, strict=True):  # the policy, in batch order
        assert check.result.decided, check.result.reason
        verdicts[kind].append(bool(check.result.drift))
        decision, state = decide(state, check.batch_id, check.result, check.stats, cfg, budget)
        retrain[kind][decision.retrain] += 1

    false_alarms = sum(verdicts["normal"])
    rate = false_alarms / NORMAL_BATCHES
    assert rate <= MAX_FALSE_ALARM_RATE, f"{false_alarms} false alarms in {NORMAL_BATCHES} batches"
    assert retrain["normal"]["triggered"] == 0
    assert sum(verdicts["drift"]) >= cfg.k  # the burst is seen as drift ...
    assert retrain["drift"]["triggered"] == 1, retrain["drift"]  # ... and retrains exactly once
    assert retrain["drift"]["cooling down"] == DRIFT_BATCHES - retrain["drift"]["not needed"] - 1
    record_figure("drift: false alarms / same-distribution batches", f"{false_alarms} / {NORMAL_BATCHES}",
                  f"<= {MAX_FALSE_ALARM_RATE:.0%}")  # fmt: skip
    record_figure("drift: retrains for a 10-batch drift burst", f"{retrain['drift']['triggered']}",
                  "exactly 1")  # fmt: skip
    record_figure("drift: drifted verdicts in the burst", f"{sum(verdicts['drift'])} / {DRIFT_BATCHES}",
                  ">= k")  # fmt: skip
    record_figure("drift: seconds per check (wall, 2 workers)", f"{took / len(stream):.2f}",
                  "Evidently report per batch")  # fmt: skip
