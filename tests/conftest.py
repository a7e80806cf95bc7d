"""Shared fixtures. Every test that writes files works in its own temporary project folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import plantwatch  # noqa: F401  (switches telemetry off before anything else is imported)

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
