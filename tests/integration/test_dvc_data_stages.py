"""The data stages of the real dvc.yaml (simulate -> ingest -> validate) in a throw-away git + DVC repo.

`dvc repro validate` produces the declared outputs, a second repro reruns nothing (and the ledger,
which is deliberately not a DVC output, is not appended to), the committed suite JSON is left
byte-identical, and a file dropped into the landing folder makes DVC re-ingest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import plantwatch

pytestmark = [pytest.mark.slow, pytest.mark.integration]

BIN = Path(sys.executable).parent
DATA_STAGES = ("simulate", "ingest", "validate")


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture()
def dvc_repo(tmp_path: Path, repo_root: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(
        repo_root / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    shutil.copytree(repo_root / "expectations", root / "expectations")
    shutil.copy(repo_root / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(repo_root / ".gitignore", root / ".gitignore")
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["simulate"].update({"assets": 2, "days": 1})
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {
        **os.environ,
        **plantwatch.offline.TELEMETRY_SWITCHES,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PLANTWATCH_ROOT": str(root),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "tiny project"],
    ):
        _run(cmd, root, env)
    return root, env


def test_data_stages_repro_then_nothing_to_do(dvc_repo: tuple[Path, dict[str, str]]) -> None:
    root, env = dvc_repo
    first = _run(["dvc", "repro", "validate"], root, env)
    for stage in DATA_STAGES:
        assert f"Running stage '{stage}'" in first.stdout, first.stdout[-2000:]
    clean = pd.read_parquet(root / "data" / "processed" / "clean.parquet")
    interim = pd.read_parquet(root / "data" / "interim" / "telemetry.parquet")
    ledger = (root / "data" / "quarantine" / "ledger.jsonl").read_text().splitlines()
    (line,) = map(json.loads, ledger)
    assert line["status"] == "accepted" and line["rows_in"] == len(interim) == 2 * 24 * 60
    assert (
        line["rows_clean"] == len(clean) and line["rows_in"] == line["rows_clean"] + line["rows_quarantined"]
    )
    assert (root / "reports" / "data_docs" / "index.html").exists()
    assert (root / "reports" / "validation" / f"{line['batch_id']}.json").exists()
    lock = (root / "dvc.lock").read_text()

    second = _run(["dvc", "repro", "validate"], root, env)
    assert "Running stage" not in second.stdout, second.stdout
    assert (root / "dvc.lock").read_text() == lock
    assert len((root / "data" / "quarantine" / "ledger.jsonl").read_text().splitlines()) == 1
    # the pipeline regenerates the suite from params: the committed JSON must come out identical
    _run(["git", "diff", "--exit-code", "--", "expectations"], root, env)

    # a delivery dropped into the landing folder is picked up by the next repro
    extra = interim[interim["asset"] == interim["asset"].iloc[0]].assign(asset="pump-99")
    extra.drop(columns=["type_errors"]).to_csv(root / "data" / "landing" / "late.csv", index=False)
    third = _run(["dvc", "repro", "validate"], root, env)
    assert "Running stage 'ingest'" in third.stdout and "Running stage 'simulate'" not in third.stdout
    assert len(pd.read_parquet(root / "data" / "processed" / "clean.parquet")) == len(clean) + len(extra)
