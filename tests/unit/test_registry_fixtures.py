"""Shared helpers for the registry tests: small sklearn models and fabricated gate-stage outputs.

The real DetectorBundle is built by another stage; the registry is generic, so a fitted
IsolationForest carrying the bundle's operating-point attributes stands in for it here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io as sio
from sklearn.ensemble import IsolationForest

from plantwatch.config import load_params
from plantwatch.registry import Evidence, Registry

METRICS = ("pr_auc", "event_recall", "false_alarms_per_asset_day")


def make_model(seed: int = 0, threshold: float = 0.6, review_low: float = 0.5) -> IsolationForest:
    """A tiny fitted estimator with the bundle's operating-point attributes."""
    x = np.random.default_rng(seed).normal(size=(40, 3))
    model = IsolationForest(n_estimators=3, random_state=seed).fit(x)
    model.threshold_ = threshold
    model.review_low_ = review_low
    return model


def dump_model(path: Path, seed: int = 0, threshold: float = 0.6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.dump(make_model(seed, threshold), path)
    return path


def holdout_metrics(pr_auc: float) -> dict[str, Any]:
    return {"pr_auc": pr_auc, "event_recall": 0.75, "false_alarms_per_asset_day": 0.4, "roc_auc": 0.9}


def cv_summary(mean: float) -> dict[str, Any]:
    return {"pr_auc": {"mean": mean, "std": 0.05, "ci_low": mean - 0.08, "ci_high": mean + 0.08}}


def gates_doc(passed: bool, chosen: str, pr_auc: float) -> dict[str, Any]:
    return {
        "passed": passed,
        "chosen": chosen,
        "gates": [
            {"name": "min_pr_auc", "value": pr_auc, "threshold": 0.3, "passed": pr_auc >= 0.3},
            {"name": "min_event_recall", "value": 0.75, "threshold": 0.5, "passed": True},
        ],
        "notes": [f"{chosen} beats baseline by 0.05 PR-AUC (CI excludes 0)"],
    }


def evidence(pr_auc: float = 0.55, kind: str = "custom", passed: bool = True) -> Evidence:
    """In-memory gate outputs for direct ``Registry.register`` calls."""
    return Evidence(
        kind=kind,
        train_info={
            "git_commit": "abc1234",
            "data_hash": f"md5-{pr_auc}",
            "params_hash": "p-1",
            "training_window": {"start": "2024-01-01", "end": "2024-01-10"},
            "features": ["temperature_mean_5", "vibration_std_30"],
        },
        holdout={"baseline": holdout_metrics(0.4), kind: holdout_metrics(pr_auc)},
        cv={"baseline": cv_summary(0.38), kind: cv_summary(pr_auc - 0.02)},
        gates=gates_doc(passed, kind, pr_auc),
        alert_budget=1.0,
        data_sources=("data/raw/telemetry.parquet",),
        gate_report="reports/gates.md",
    )


def write_gate_outputs(
    root: Path, *, passed: bool = True, chosen: str = "custom", pr_auc: float = 0.55, seed: int = 0
) -> None:
    """Fabricate what the train/evaluate/gate stages write, in the contract's layout."""
    ev = evidence(pr_auc, chosen, passed)
    dump_model(root / "models" / "baseline.skops", seed=seed + 100, threshold=0.7)
    dump_model(root / "models" / f"{chosen}.skops", seed=seed, threshold=0.6)
    files = {
        "models/train_info.json": dict(ev.train_info),
        "metrics/holdout.json": dict(ev.holdout),
        "metrics/cv.json": dict(ev.cv),
        "metrics/gates.json": dict(ev.gates),
    }
    for rel, doc in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(doc))
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports" / "gates.md").write_text("# Gates\n\nall fine\n" if passed else "# Gates\n\nfailed\n")


def open_registry(root: Path) -> Registry:
    return Registry(root, load_params(root / "params.yaml").registry)


@pytest.fixture(name="registry")
def registry_fixture(project: Path) -> Registry:
    """A Registry on the test's throw-away project (import this name to use the fixture)."""
    return open_registry(project)


def register_candidate(reg: Registry, tmp: Path, pr_auc: float = 0.55, seed: int = 0) -> str:
    """Register one passing candidate built from a fresh model file; returns its tag."""
    artifact = dump_model(tmp / f"cand-{seed}-{pr_auc}.skops", seed=seed)
    return reg.register(artifact, evidence(pr_auc)).tag
