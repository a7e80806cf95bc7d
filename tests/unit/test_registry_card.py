"""Model card: pure builder/renderer, and the card stored with each version describes that version."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from plantwatch.config import RegistryConfig
from plantwatch.registry import Registry, build_model_card, render_model_card_md
from tests.unit.test_registry_fixtures import (  # noqa: F401  (registry_fixture provides `registry`)
    dump_model,
    evidence,
    registry_fixture,
)


def _card(**overrides: object) -> dict:
    ev = evidence(0.58)
    args: dict = dict(
        tag="plantwatch-detector:20240101-000000-000000-abcdef",
        created="2024-01-01T00:00:00Z",
        kind=ev.kind,
        train_info=ev.train_info,
        holdout=ev.holdout,
        cv=ev.cv,
        gates=ev.gates,
        passed=True,
        reasons=[],
        threshold=0.62,
        review_low=0.53,
        alert_budget=1.5,
        intended_use=RegistryConfig().intended_use,
        limitations=RegistryConfig().limitations,
        data_sources=["data/raw/telemetry.parquet"],
        artifact="model.skops",
        artifact_sha256="f" * 64,
        gate_report="reports/gates.md",
    )
    args.update(overrides)
    return build_model_card(**args)


def test_card_has_every_required_section() -> None:
    card = _card()
    assert card["intended_use"].startswith("Flag anomalous readings")
    assert card["data"] == {
        "sources": ["data/raw/telemetry.parquet"],
        "data_hash": "md5-0.58",
        "training_window": {"start": "2024-01-01", "end": "2024-01-10"},
        "features": ["temperature_mean_5", "vibration_std_30"],
        "git_commit": "abc1234",
        "params_hash": "p-1",
    }
    assert card["selection"]["candidates"] == ["custom", "baseline"]  # chosen first
    assert card["selection"]["why"] == ["custom beats baseline by 0.05 PR-AUC (CI excludes 0)"]
    assert card["metrics"]["holdout"]["custom"]["pr_auc"] == 0.58
    assert card["metrics"]["cv"]["custom"]["pr_auc"]["ci_low"] == pytest.approx(0.48)
    assert [(g["name"], g["passed"]) for g in card["gates"]] == [
        ("min_pr_auc", True),
        ("min_event_recall", True),
    ]
    assert card["operating_point"] == {"threshold": 0.62, "review_low": 0.53, "alert_budget": 1.5}
    assert len(card["limitations"]) == len(RegistryConfig().limitations)
    json.dumps(card, allow_nan=False)  # strictly JSON


def test_markdown_renders_metrics_intervals_gates_and_operating_point() -> None:
    md = render_model_card_md(_card())
    assert md.startswith("# Model card — plantwatch-detector:20240101-000000-000000-abcdef")
    for needle in (
        "## Intended use",
        "`md5-0.58`",
        "chosen: **custom**",
        "| pr_auc | 0.58 | 0.4 |",  # holdout, chosen vs baseline
        "0.56 ± 0.05 [0.48, 0.64]",  # CV mean ± std [CI] of the chosen candidate
        "| min_pr_auc | 0.58 | 0.3 | yes |",
        "Alert threshold: 0.62",
        "Review band lower edge: 0.53",
        "Alert budget: 1.5 false alarms per asset-day",
        "## Known limitations",
    ):
        assert needle in md, needle


def test_rejected_card_and_missing_values_render_cleanly() -> None:
    ev = evidence(0.2, passed=False)
    holdout = {"custom": {"pr_auc": math.nan, "event_recall": 0.1}}
    card = _card(
        gates=ev.gates, holdout=holdout, passed=False, reasons=["gate min_pr_auc failed"], threshold=None
    )
    assert card["metrics"]["holdout"]["custom"]["pr_auc"] is None
    md = render_model_card_md(card)
    assert "REJECTED" in md and "- Rejected: gate min_pr_auc failed" in md
    assert "| pr_auc | n/a |" in md and "Alert threshold: n/a" in md


def test_each_stored_card_carries_its_own_versions_metrics(registry: Registry, tmp_path: Path) -> None:
    tags = {}
    for seed, (pr_auc, threshold) in enumerate([(0.51, 0.61), (0.73, 0.83)]):
        artifact = dump_model(tmp_path / f"m{seed}.skops", seed=seed, threshold=threshold)
        tags[(pr_auc, threshold)] = registry.register(artifact, evidence(pr_auc)).tag
    for (pr_auc, threshold), tag in tags.items():
        card = registry.card(tag)
        assert card["model"]["tag"] == tag
        assert card["metrics"]["holdout"]["custom"]["pr_auc"] == pr_auc
        assert card["operating_point"]["threshold"] == threshold  # read from the stored bundle
        assert card["model"]["sha256"] == registry.record(tag).artifact_sha256
        md = (registry.model_dir(tag) / "model_card.md").read_text()
        assert f"| pr_auc | {pr_auc:.4g} |" in md and f"Alert threshold: {threshold:.4g}" in md
