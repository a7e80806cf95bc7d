"""Post-promotion guard end to end: real bundles, real registry, `plantwatch monitor` rolls back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from plantwatch import scoring
from plantwatch.bundle import save_bundle
from plantwatch.cli import app
from plantwatch.config import load_params
from plantwatch.monitoring import load_state
from plantwatch.registry import Registry
from plantwatch.simulate import simulate_fleet
from plantwatch.training import Settings, fit_final
from tests.integration.test_service import register

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ASSETS = 2
ALERT_SHARE = 0.01  # ~14 alerts per asset-day, far above any budget the guard tolerates




def test_monitor_starts_the_guard_on_promotion_and_rolls_back_an_alarm_storm(project: Path) -> None:
    params = load_params(project / "params.yaml")
    fleet = simulate_fleet(params.simulate, params.data, seed=3, assets=ASSETS, days=4)
    t0 = fleet["timestamp"].min()
    train = fleet[fleet["timestamp"] < t0 + pd.Timedelta(days=1)]
    validation = fleet[
        (fleet["timestamp"] >= t0 + pd.Timedelta(days=1)) & (fleet["timestamp"] < t0 + pd.Timedelta(days=1.5))
    ]
    day = fleet[
        (fleet["timestamp"] >= t0 + pd.Timedelta(days=2)) & (fleet["timestamp"] < t0 + pd.Timedelta(days=3))
    ]
    (project / "data" / "processed").mkdir(parents=True)
    train.to_parquet(project / "data" / "processed" / "train.parquet")

    s = Settings(data=params.data, features=params.features, train=params.train, rules=params.rules)
    assets = sorted(fleet["asset"].unique())
    registry = Registry(project, params.registry)
    tags = []
    for kind, hyper in (("baseline", {}), ("custom", {"n_estimators": 20, "max_samples": 128})):
        artifact = project / "models" / f"{kind}.skops"
        save_bundle(fit_final(kind, hyper, train, validation, s, assets), artifact)
        tags.append(register(registry, artifact, kind))
        registry.promote(tags[-1], reason="test")
    old, new = tags
    assert registry.production_tag() == new

    # The day as the inference log would hold it after the new model started an alarm storm.
    bundle = registry.load(new)
    logged = day.reset_index(drop=True).copy()
    logged["score"] = scoring.score_readings(bundle, logged)["score"].to_numpy()
    storm = np.random.default_rng(0).random(len(logged)) < ALERT_SHARE
    logged["decision"] = np.where(storm, "alert", "normal")
    logged["model_version"] = new
    logged.to_parquet(project / "storm.parquet")

    result = CliRunner().invoke(app, ["monitor", "storm.parquet", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["production_sync"].startswith(f"production is {new}: guard started")
    assert out["rollback"] and "alert rate" in out["rollback_reason"]
    assert f"rolled back to {old}" in out["actions"]
    assert out["score"] is not None  # the reference was scored by the new model at promotion

    assert registry.production_tag() == old
    events = [e["event"] for e in registry.audit_events()]
    assert events.count("rollback") == 1
    state = load_state(project / "monitoring" / "state.json")
    assert state.production_version == old and state.guard is None and state.rollbacks == 1
    # the version rolled back to served before: the next run does not guard it again
    again = CliRunner().invoke(app, ["monitor", "storm.parquet", "--json"])
    assert again.exit_code == 2 and "already monitored" in again.stderr
    assert load_state(project / "monitoring" / "state.json").guard is None
