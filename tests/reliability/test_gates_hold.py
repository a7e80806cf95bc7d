"""The gates hold: models trained on poisoned data are promoted 0 of N times, a model trained on
clean data N of N times.

In process, with the training and gating cores (``training.train_candidates``,
``gating.evaluate_candidates``, ``gating.decide``) and the model engineer's fast training settings
(tests/model/test_gates.py) on small seeded simulator fleets. The holdout, which is the gates'
evidence, is always clean; only what the model learns from (train + validation) is poisoned:

* flipped labels: every label inverted (the model is fitted on the faults, thresholds set on them);
* shuffled labels: labels permuted at random across the rows;
* unlabelled anomalies: training data with faults on 20 % of the readings, all labelled normal;
* dropped sensor: one sensor missing (all null) in the training data.

"Promoted" means the gate decision passed. A training run that refuses poisoned data outright
with a clear ``PlantwatchError`` also counts as not promoted (and is reported as such).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plantwatch import training
from plantwatch.config import Params
from plantwatch.errors import PlantwatchError
from plantwatch.simulate import simulate_fleet
from tests.model.test_gates import _evaluate, _params
from tests.reliability.conftest import record_figure

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SEEDS = (42, 7, 11)  # N = 3 fleets per variant
#: Share of readings inside (unlabelled) fault episodes in the "unlabelled anomalies" poison.
POISON_RATE = 0.2
Poison = Callable[[Params, pd.DataFrame, int], pd.DataFrame]


def _flip(p: Params, learn: pd.DataFrame, seed: int) -> pd.DataFrame:
    return learn.assign(label=1 - learn["label"])


def _shuffle(p: Params, learn: pd.DataFrame, seed: int) -> pd.DataFrame:
    return learn.assign(label=np.random.default_rng(seed).permutation(learn["label"].to_numpy()))


def _unlabelled_anomalies(p: Params, learn: pd.DataFrame, seed: int) -> pd.DataFrame:
    dirty_sim = p.simulate.model_copy(update={"anomaly_rate": POISON_RATE})
    dirty = simulate_fleet(dirty_sim, p.data, seed=seed).assign(label=0)
    out = dirty[dirty["timestamp"] <= learn["timestamp"].max()].reset_index(drop=True)
    assert len(out) == len(learn)
    return out


def _drop_sensor(p: Params, learn: pd.DataFrame, seed: int) -> pd.DataFrame:
    return learn.assign(**{p.data.sensor_names[0]: np.nan})


POISONS: dict[str, Poison] = {
    "flipped labels": _flip,
    "shuffled labels": _shuffle,
    "unlabelled anomalies": _unlabelled_anomalies,
    "dropped sensor": _drop_sensor,
}


def _promoted(p: Params, seed: int, poison: Poison | None) -> tuple[bool, str]:
    split, _ = training.prepare_split(simulate_fleet(p.simulate, p.data, seed=seed), p.split)
    train, validation = split.train, split.validation
    if poison is not None:
        learn = poison(p, pd.concat([train, validation], ignore_index=True), seed)
        cut = len(train)
        train, validation = learn.iloc[:cut].reset_index(drop=True), learn.iloc[cut:].reset_index(drop=True)
        split = dataclasses.replace(split, train=train, validation=validation)
    try:
        _, decision = _evaluate(p, split, train)
    except PlantwatchError as err:
        return False, f"refused: {err}"
    failed = [g["name"] for g in decision["gates"] if not g["passed"]]
    return bool(decision["passed"]), ", ".join(failed) or "all gates passed"


@pytest.fixture(scope="module")
def params() -> Params:
    return _params(REPO)


def test_clean_models_are_promoted_n_of_n(params: Params) -> None:
    outcomes = [_promoted(params, seed, None) for seed in SEEDS]
    passed = sum(ok for ok, _ in outcomes)
    record_figure("gates: clean model promoted", f"{passed} / {len(SEEDS)}", f"{len(SEEDS)} of {len(SEEDS)}")
    assert passed == len(SEEDS), outcomes


@pytest.mark.parametrize("name", list(POISONS))
def test_poisoned_models_are_promoted_0_of_n(params: Params, name: str) -> None:
    outcomes = [_promoted(params, seed, POISONS[name]) for seed in SEEDS]
    promoted = sum(ok for ok, _ in outcomes)
    record_figure(f"gates: '{name}' promoted", f"{promoted} / {len(SEEDS)}", "0")
    assert promoted == 0, outcomes
