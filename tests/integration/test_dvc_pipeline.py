"""The real dvc.yaml end to end on tiny simulated data, in a throw-away git + DVC repository.

Checks the contract DVC users rely on: `dvc repro` runs simulate -> ... -> gate and writes every
declared output; a second repro reruns nothing; `dvc exp run -S train.alert_budget=2` works;
`dvc metrics show --json` parses; `dvc plots show` renders. Lenient gates: the model's quality
is tested in tests/model/test_gates.py, this test is about the pipeline's wiring.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import plantwatch

pytestmark = [pytest.mark.slow, pytest.mark.integration]

BIN = Path(sys.executable).parent


def _tiny_params(repo_root: Path) -> dict:
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["simulate"].update({"assets": 2, "days": 6, "anomaly_rate": 0.08})
    raw["train"]["cv_min_train_fraction"] = 0.3  # big CV blocks: every fold sees some anomaly
    raw["train"]["model"] = {**raw["train"].get("model", {}), "n_estimators": 30, "max_fit_rows": 3000,
                             "mcd_max_rows": 300, "grid": {}}
    raw["scale"] = {"dask_address": None, "local_workers": 1}
    raw["gates"].update({"min_pr_auc": 0.0, "min_event_recall": 0.0, "max_false_alarms_per_asset_day": 1000.0,
                         "min_cv_ci_low": 0.0, "max_cv_std": 1.0, "min_gain_over_baseline": -1.0,
                         "bootstrap_resamples": 100})
    return raw


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    return proc


@pytest.fixture()
def dvc_repo(tmp_path: Path, repo_root: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "repo"
    root.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(repo_root / "src", root / "src", ignore=ignore)
    if (repo_root / "expectations").exists():
        shutil.copytree(repo_root / "expectations", root / "expectations")
    shutil.copy(repo_root / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(repo_root / ".gitignore", root / ".gitignore")
    (root / "params.yaml").write_text(yaml.safe_dump(_tiny_params(repo_root), sort_keys=False))
    env = {**os.environ, **plantwatch.offline.TELEMETRY_SWITCHES,
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PLANTWATCH_ROOT": str(root), "BENTOML_HOME": str(root / ".bentoml"),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    env.pop("PLANTWATCH_DASK_ADDRESS", None)
    _run(["git", "init", "-q"], root, env)
    _run(["dvc", "init", "-q"], root, env)
    _run(["dvc", "config", "core.analytics", "false"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "tiny project"], root, env)
    return root, env


def test_repro_metrics_plots_and_experiment(dvc_repo: tuple[Path, dict[str, str]]) -> None:
    root, env = dvc_repo
    first = _run(["dvc", "repro", "gate"], root, env)
    for stage in ("simulate", "ingest", "validate", "features", "train", "evaluate", "gate"):
        assert f"Running stage '{stage}'" in first.stdout
    for rel in ("models/baseline.skops", "models/custom.skops", "models/train_info.json",
                "metrics/holdout.json", "metrics/cv.json", "metrics/gates.json", "reports/gates.md",
                "plots/pr_curve_custom.csv", "plots/scores_custom.csv", "reports/figures/pr_curves.png",
                "reports/figures/alerts.png", "data/processed/split.json"):
        assert (root / rel).is_file(), rel
    info = json.loads((root / "models/train_info.json").read_text())
    assert info["git_commit"] != "unknown" and len(info["cv"]["folds"]) == 5
    assert set(info["candidates"]) == {"baseline", "custom"}
    gates = json.loads((root / "metrics/gates.json").read_text())
    assert gates["passed"] is True and gates["chosen"] in ("baseline", "custom")

    again = _run(["dvc", "repro", "gate"], root, env)
    assert "Running stage" not in again.stdout, again.stdout

    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], root, env).stdout)
    files = next(iter(shown.values()))["data"]
    assert files["metrics/holdout.json"]["data"]["custom"]["pr_auc"] is not None
    assert files["metrics/gates.json"]["data"]["passed"] is True

    plots = json.loads(_run(["dvc", "plots", "show", "--json"], root, env).stdout)["data"]
    assert plots["Holdout PR curve"] and plots["Score distribution, custom (holdout)"]

    budget_before = info["alert_budget"]
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "first run"], root, env)
    exp = _run(["dvc", "exp", "run", "-S", "train.alert_budget=2"], root, env)
    assert "Running stage 'train'" in exp.stdout and "Running stage 'simulate'" not in exp.stdout
    after = json.loads((root / "models/train_info.json").read_text())
    assert (budget_before, after["alert_budget"]) == (1.0, 2.0)
    assert after["candidates"]["custom"]["threshold"] <= info["candidates"]["custom"]["threshold"]
