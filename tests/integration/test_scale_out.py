"""Scale-out: CV folds run as Prefect tasks on a Dask cluster give exactly the serial results."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from plantwatch import parallel, training
from plantwatch.config import ScaleConfig, load_params
from plantwatch.simulate import simulate_fleet

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def cluster_address(prefect_harness: None) -> Iterator[str]:
    """An in-process Dask cluster (threads, no dashboard on a public port); Prefect API from conftest."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address="127.0.0.1:0") as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def fold_calls(repo_root: Path) -> list[dict]:
    params = load_params(repo_root / "params.yaml")
    frame = simulate_fleet(params.simulate, params.data, assets=2, days=3, seed=5)
    train = params.train.model_copy(update={"model": params.train.model.model_copy(
        update={"n_estimators": 20, "max_fit_rows": 2000, "mcd_max_rows": 300})})
    s = training.Settings(data=params.data, features=params.features, train=train, rules=params.rules)
    folds = training.make_folds(frame["timestamp"], train.cv_folds, train.cv_min_train_fraction)
    return [{"kind": kind, "grid": [{}], "frame": frame, "fold": fold, "s": s}
            for kind in ("baseline", "custom") for fold in folds[-1:]]


@pytest.fixture(scope="module")
def serial(fold_calls: list[dict]) -> list[list[dict]]:
    return parallel.run_calls(training.run_fold, fold_calls, ScaleConfig(local_workers=1), label="cv")


def _scores(results: list[list[dict]]) -> list[np.ndarray]:
    return [r[0]["scores"] for r in results]


def test_dask_runner_matches_serial(cluster_address: str, fold_calls: list[dict], serial: list[list[dict]],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(parallel.DASK_ADDRESS_ENV, cluster_address)
    assert parallel.dask_address(ScaleConfig()) == cluster_address
    on_dask = parallel.run_calls(training.run_fold, fold_calls, ScaleConfig(local_workers=1), label="cv")
    assert len(on_dask) == len(serial)
    for a, b in zip(_scores(serial), _scores(on_dask), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [r[0]["threshold"] for r in on_dask] == [r[0]["threshold"] for r in serial]


def test_local_processes_match_serial(fold_calls: list[dict], serial: list[list[dict]]) -> None:
    pooled = parallel.run_calls(training.run_fold, fold_calls, ScaleConfig(local_workers=2), label="cv")
    for a, b in zip(_scores(serial), _scores(pooled), strict=True):
        np.testing.assert_array_equal(a, b)


def test_results_keep_call_order() -> None:
    calls = [{"x": i} for i in range(7)]
    squares = parallel.run_calls(_square, calls, ScaleConfig(local_workers=2), label="t")
    assert squares == [i * i for i in range(7)]
    assert parallel.run_calls(_square, [], ScaleConfig(), label="t") == []


def _square(x: int) -> int:
    return x * x
