"""The gates hold: on fleets where a model trained on clean data is promoted, models trained on
poisoned versions of the same data are promoted 0 of N times (N = 3 fleets per poison).

In process, with the training and gating cores (``training.train_candidates``,
``gating.evaluate_candidates``, ``gating.decide``) and the model engineer's fast training settings
(tests/model/test_gates.py) on small seeded simulator fleets. The holdout, which is the gates'
evidence, is always clean; only what the model learns from (train + validation) is poisoned:

* flipped labels: every label inverted (the model is fitted on the faults, thresholds set on them);
* shuffled labels: labels permuted at random across the rows;
* unlabelled anomalies: training data with faults on 20 % of the readings, all labelled normal;
* dropped sensor: one sensor missing (all null) in the training data.

As in the pipeline, data goes through validation (``validate_frame``) before training: a batch it
rejects never reaches training. "Promoted" means the gate decision passed. A training run that
refuses poisoned data with a clear ``PlantwatchError`` also counts as not promoted; any other
exception fails the test (a crash is not a refusal).

The clean control runs on ``CLEAN_SEEDS``; the promise "a clean model is promoted N of N" does NOT
hold on these small fleets (a holdout with 1-2 fault episodes makes PR-AUC/CV gates refuse good
models), so the clean pass count is recorded as a figure and the poisons run on the fleets whose
clean model passed (at least ``MIN_CONTROL_SEEDS`` are required).
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
from plantwatch.validation import validate_frame
from tests.model.test_gates import _evaluate, _params
from tests.reliability.conftest import record_figure

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CLEAN_SEEDS = (42, 7, 8, 11)
N_POISONED = 3  # fleets per poison
MIN_CONTROL_SEEDS = 3
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
    if poison is not None:
        learn = poison(p, pd.concat([split.train, split.validation], ignore_index=True), seed)
        checked = validate_frame(learn, p.data, p.validate_)
        if not checked.accepted:
            return False, f"validation rejected: {'; '.join(checked.batch_failures)}"
        cut = len(split.train)
        train, validation = learn.iloc[:cut].reset_index(drop=True), learn.iloc[cut:].reset_index(drop=True)
        split = dataclasses.replace(split, train=train, validation=validation)
    try:
        _, decision = _evaluate(p, split, split.train)
    except PlantwatchError as err:
        return False, f"refused: {err}"
    failed = [g["name"] for g in decision["gates"] if not g["passed"]]
    return bool(decision["passed"]), ", ".join(failed) or "all gates passed"


@pytest.fixture(scope="module")
def params() -> Params:
    return _params(REPO)


@pytest.fixture(scope="module")
def control_seeds(params: Params) -> list[int]:
    """Fleets on which the clean model is promoted (the gates can pass there)."""
    outcomes = {seed: _promoted(params, seed, None) for seed in CLEAN_SEEDS}
    passed = [seed for seed, (ok, _) in outcomes.items() if ok]
    record_figure("gates: clean model promoted (small fleets)", f"{len(passed)} / {len(CLEAN_SEEDS)}",
                  f"promise {len(CLEAN_SEEDS)} of {len(CLEAN_SEEDS)}: NOT met")  # fmt: skip
    assert len(passed) >= MIN_CONTROL_SEEDS, outcomes
    return passed[:N_POISONED]


def test_clean_control_passes_on_enough_fleets(control_seeds: list[int]) -> None:
    assert len(control_seeds) == N_POISONED


@pytest.mark.parametrize("name", list(POISONS))
def test_poisoned_models_are_promoted_0_of_n(params: Params, control_seeds: list[int], name: str) -> None:
    outcomes = [_promoted(params, seed, POISONS[name]) for seed in control_seeds]
    promoted = sum(ok for ok, _ in outcomes)
    record_figure(f"gates: '{name}' promoted", f"{promoted} / {len(control_seeds)}", "0")
    assert promoted == 0, outcomes
