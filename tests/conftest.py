"""Shared fixtures. Every test that writes files works in its own temporary project folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

import plantwatch  # noqa: F401  (switches telemetry off before anything else is imported)
from plantwatch.config import Params

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    if not DATASETS.exists():
        pytest.fail(f"real datasets not found at {DATASETS} (expected ../shared/datasets beside the repo)")
    return DATASETS


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A throw-away plantwatch project: a copy of params.yaml and expectations/, cwd set to it."""
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    if (REPO / "expectations").exists():
        shutil.copytree(REPO / "expectations", root / "expectations")
    monkeypatch.chdir(root)
    monkeypatch.setenv("PLANTWATCH_ROOT", str(root))
    monkeypatch.setenv("BENTOML_HOME", str(root / ".bentoml"))
    yield root


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in plantwatch.offline.TELEMETRY_SWITCHES.items():
        monkeypatch.setenv(key, value)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


# --- simulated data (plantwatch.simulate) ---------------------------------------------------------
SMALL_FLEET_ASSETS = 6
SMALL_FLEET_DAYS = 3.0


@pytest.fixture(scope="session")
def sim_params() -> Params:
    """The repo's params.yaml as typed Params (read-only; use ``model_copy(update=...)`` to vary)."""
    from plantwatch.config import load_params

    return load_params(REPO / "params.yaml")


@pytest.fixture(scope="session")
def small_fleet(sim_params: Params) -> pd.DataFrame:
    """A seeded canonical frame, 6 assets x 3 days at data.interval_s (25,920 rows, ~2 % labelled,
    every fault kind present), generated once per session. Shared: ``.copy()`` before mutating."""
    from plantwatch.simulate import simulate_fleet

    return simulate_fleet(
        sim_params.simulate, sim_params.data, assets=SMALL_FLEET_ASSETS, days=SMALL_FLEET_DAYS
    )


# --- Prefect ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API for the whole session (it takes 10-25 s to start here)."""
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    with prefect_test_harness(server_startup_timeout=None):
        yield
