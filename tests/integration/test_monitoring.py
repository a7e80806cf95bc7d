"""Monitor stage end to end on simulator data: workspace + dashboard, reports, state, CLI, actions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from plantwatch.cli import app
from plantwatch.config import Params, load_params
from plantwatch.drift import RetrainRequest
from plantwatch.features import time_split
from plantwatch.monitoring import (
    MonitoringPaths,
    dashboard_panels,
    ensure_project,
    load_state,
    monitor_batch,
    open_workspace,
    record_promotion,
)
from plantwatch.paths import ProjectPaths
from plantwatch.simulate import simulate_fleet

pytestmark = pytest.mark.integration

ASSETS = 2
DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def params(repo_root: Path) -> Params:
    return load_params(repo_root / "params.yaml")


@pytest.fixture(scope="module")
def frames(params: Params) -> dict[str, pd.DataFrame]:
    """Reference (train part of the simulator's default window), normal days after it, drift days."""
    days = params.simulate.days
    normal = simulate_fleet(params.simulate, params.data, seed=11, assets=ASSETS, days=days + 4)
    t0 = normal["timestamp"].min()
    end = t0 + pd.Timedelta(days=days)
    drift = simulate_fleet(
        params.simulate, params.data, scenario="drift", seed=11, assets=ASSETS, start=end, days=3
    )

    def day(frame: pd.DataFrame, start: pd.Timestamp) -> pd.DataFrame:
        ts = frame["timestamp"]
        return frame[(ts >= start) & (ts < start + DAY)].reset_index(drop=True)

    out = {"reference": time_split(normal[normal["timestamp"] < end], params.split).train}
    for i in range(3):
        out[f"normal{i}"] = day(normal, end + i * DAY)
        out[f"drift{i}"] = day(drift, end + i * DAY)
    out["short"] = out["normal0"][out["normal0"]["timestamp"] < end + pd.Timedelta(hours=3)]
    return out


def scored(frame: pd.DataFrame, version: str, alert_share: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """The batch as the inference log has it: inputs + score, decision, model_version."""
    rng = np.random.default_rng(seed)
    out = frame.copy()
    out["score"] = rng.random(len(out))
    out["decision"] = np.where(out["score"] >= 1 - alert_share, "alert", "normal")
    out["model_version"] = version
    return out


def setup_project(root: Path, frames: dict[str, pd.DataFrame], *names: str) -> None:
    (root / "data" / "processed").mkdir(parents=True)
    frames["reference"].to_parquet(root / "data" / "processed" / "train.parquet")
    for name in names:
        frames[name].to_parquet(root / f"{name}.parquet")


def series(workspace_dir: Path, project_id: object, panel_title: str) -> list[list[float | None]]:
    """Values the Evidently UI would plot for a dashboard panel (through its own storage code)."""
    from evidently.ui.service.base import SeriesFilter
    from evidently.ui.service.storage.local import create_local_project_manager

    ws = open_workspace(workspace_dir)
    panel = next(p for p in ws.get_project(project_id).dashboard.model().panels if p.title == panel_title)
    filters = [
        SeriesFilter(tags=v.tags, metadata=v.metadata, metric=v.metric, metric_labels=v.metric_labels)
        for v in panel.values
    ]
    manager = create_local_project_manager(str(workspace_dir), False)
    response = asyncio.run(manager.data_storage.get_data_series(project_id, filters, None, None))
    return [s.values for s in response.series]


def test_workspace_holds_project_dashboard_and_one_snapshot_per_batch(
    project: Path, params: Params, frames: dict[str, pd.DataFrame]
) -> None:
    setup_project(project, frames)
    paths = ProjectPaths.at(project)
    batches = {
        "day-scored": scored(frames["normal0"], "v1", alert_share=0.0005),
        "too-short": frames["short"],
        "day-raw": frames["normal1"],
    }
    outcomes = [monitor_batch(b, params=params, paths=paths, batch_id=name) for name, b in batches.items()]
    assert [o.decision.retrain for o in outcomes] == ["not needed", "insufficient data", "not needed"]
    assert outcomes[0].result.drift is False and outcomes[0].stats.alerts_per_asset_day is not None

    mon = MonitoringPaths.of(paths)
    ws = open_workspace(mon.workspace)
    found = ws.search_project(params.monitor.project)
    assert len(found) == 1
    project_id = found[0].id
    assert ensure_project(ws, params.data.sensor_names, params.monitor).id == project_id  # reused by name
    titles = {p.title for p in found[0].dashboard.model().panels}
    assert titles == {panel.title for _, panel in dashboard_panels(params.data.sensor_names, params.monitor)}
    assert {
        "Share of drifted sensors",
        "Per-sensor drift score",
        "Alert rate vs budget",
        "Review rate",
        "Score quantiles",
        "Rows scored",
    } <= titles
    assert len(ws.list_runs(project_id)) == len(batches)
    for name in batches:
        assert (mon.reports / f"{name}.html").stat().st_size > 0
    assert load_state(mon.state).seen_batches == list(batches)

    per_sensor = series(mon.workspace, project_id, "Per-sensor drift score")
    assert len(per_sensor) == len(params.data.sensor_names)
    assert all(len([v for v in s if v is not None]) == 2 for s in per_sensor)  # no drift on the short batch
    rows = series(mon.workspace, project_id, "Rows scored")
    assert sorted(rows[0]) == sorted(float(len(b)) for b in batches.values())
    alert_series = series(mon.workspace, project_id, "Alert rate vs budget")
    assert len(alert_series) == 3 and params.train.alert_budget in alert_series[1] + alert_series[0]
    assert len(series(mon.workspace, project_id, "Score quantiles")) == len(params.monitor.guard.quantiles)


def test_cli_prints_the_decision_and_refuses_a_batch_twice(
    project: Path, frames: dict[str, pd.DataFrame]
) -> None:
    setup_project(project, frames, "normal2")
    runner = CliRunner()
    first = runner.invoke(app, ["monitor", "normal2.parquet", "--json"])
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    assert out["drift"] is False and out["retrain"] == "not needed" and out["drift_share"] == 0.0
    assert set(out["sensors"]) == set(load_params(project / "params.yaml").data.sensor_names)
    assert all(s["method"] == "wasserstein" and not s["drifted"] for s in out["sensors"].values())
    assert Path(out["report"]).exists()
    assert out["validation"]["status"] == "accepted" and out["validation"]["rows_clean"] == out["rows"]

    broken = frames["normal1"].drop(columns=["pressure"])  # breaks the data contract
    broken.to_parquet(project / "broken.parquet")
    rejected = runner.invoke(app, ["monitor", "broken.parquet"])
    assert rejected.exit_code == 1 and "rejected" in rejected.stderr
    assert len(rejected.stderr.strip().splitlines()) == 1
    assert len(load_state(project / "monitoring" / "state.json").seen_batches) == 1  # no decision taken

    again = runner.invoke(app, ["monitor", "normal2.parquet"])
    assert again.exit_code == 2 and "already monitored" in again.stderr
    missing = runner.invoke(app, ["monitor", "nope.parquet"])
    assert missing.exit_code == 2 and len(missing.stderr.strip().splitlines()) == 1


def test_cli_drifted_stream_requests_exactly_one_retrain(
    project: Path, frames: dict[str, pd.DataFrame]
) -> None:
    setup_project(project, frames, "drift0", "drift1", "drift2")
    runner = CliRunner()
    retrains = []
    for name in ("drift0", "drift1", "drift2"):
        result = runner.invoke(app, ["monitor", f"{name}.parquet", "--json"])
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)
        assert out["drift"] is True and "pressure" in out["drifted_sensors"]
        retrains.append(out["retrain"])
    assert retrains == ["not needed", "triggered", "cooling down"]
    state = load_state(project / "monitoring" / "state.json")
    assert state.retrain_in_progress and state.retrains_triggered == 1
    audit = [json.loads(line) for line in (project / "registry" / "audit.jsonl").read_text().splitlines()]
    requested = [e for e in audit if e["event"] == "retrain_requested"]
    assert len(requested) == 1 and requested[0]["batch_id"].startswith("drift1-")


def test_guard_rollback_and_failing_retrain_are_handled(
    project: Path, params: Params, frames: dict[str, pd.DataFrame]
) -> None:
    setup_project(project, frames)
    paths = ProjectPaths.at(project)
    reference = scored(frames["reference"], "v2", seed=1)
    state = record_promotion(paths, params.monitor, "v2", reference[["timestamp", "asset", "score"]])
    assert state.guard is not None and state.production_version == "v2"

    rolled: list[str] = []

    def rollback(decision: object) -> str:
        rolled.append(getattr(decision, "rollback_reason", ""))
        return "v1"

    noisy = scored(frames["normal0"], "v2", alert_share=0.01, seed=2)  # ~14 alerts/asset-day vs budget 1
    outcome = monitor_batch(noisy, params=params, paths=paths, batch_id="noisy", rollback=rollback)
    assert outcome.decision.rollback and len(rolled) == 1 and "alert rate" in rolled[0]
    assert outcome.result.score is not None and not outcome.result.score.drifted  # reference scores recorded
    assert "rolled back to v1" in outcome.actions
    after = load_state(MonitoringPaths.of(paths).state)
    assert after.guard is None and after.production_version == "v1" and after.rollbacks == 1

    def broken_trigger(request: RetrainRequest) -> str:
        raise RuntimeError("prefect unreachable")

    results = [
        monitor_batch(
            frames[f"drift{i}"], params=params, paths=paths, batch_id=f"d{i}", retrain=broken_trigger
        )
        for i in range(2)
    ]
    assert results[1].decision.retrain == "triggered"
    assert results[1].errors and "prefect unreachable" in results[1].errors[0]
    assert not load_state(MonitoringPaths.of(paths).state).retrain_in_progress  # the next batch may retry


def test_inference_log_day_counts_each_reading_once(
    project: Path, params: Params, frames: dict[str, pd.DataFrame]
) -> None:
    from datetime import datetime

    from plantwatch import inference_log as ilog
    from plantwatch.monitoring import batch_id_for, load_batch

    day = frames["normal0"]
    sensors = params.data.sensor_names
    root = ProjectPaths.at(project).inference_log
    halves = [day.iloc[: len(day) * 2 // 3], day.iloc[len(day) // 3 :]]  # overlapping requests
    for i, part in enumerate(halves):
        results = pd.DataFrame(
            {
                "score": np.full(len(part), 0.1 * (i + 1)),
                "decision": "normal",
                "rules": [[] for _ in range(len(part))],
                "top_sensors": [[] for _ in range(len(part))],
                "full_history": True,
            }
        )
        log = ilog.build_log_frame(
            part,
            results,
            sensors=sensors,
            request_id=f"r{i}",
            model_version="v1",
            threshold=0.5,
            source="http",
            logged_at=datetime(2024, 6, 1, 12, i),
        )
        ilog.write_log(log, root, sensors)
    folder = next(root.glob("date=*"))
    batch = load_batch(folder, params.data.default_asset)
    assert len(batch) == len(day) and not batch.duplicated(["asset", "timestamp"]).any()
    later = pd.MultiIndex.from_frame(halves[1][["asset", "timestamp"]])
    in_later = pd.MultiIndex.from_frame(batch[["asset", "timestamp"]]).isin(later)
    assert (
        in_later.sum() == len(halves[1]) and (batch.loc[in_later, "score"] == 0.2).all()
    )  # later scoring wins
    assert (batch.loc[~in_later, "score"] == 0.1).all()
    assert {"rules", "top_sensors", "request_id"}.isdisjoint(batch.columns)
    assert batch_id_for(folder).startswith("date-") and batch_id_for(folder) == batch_id_for(folder)
