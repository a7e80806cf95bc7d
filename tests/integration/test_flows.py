"""Prefect flows: retraining (real DVC pipeline), drift-triggered retraining, rollback, deployments.

One tiny git + DVC project is trained once per module through ``training_flow`` (the real
``dvc repro`` of the repo's dvc.yaml on 3 simulated pumps x 4 days); tests that change it work on
a copy. Every flow runs under ONE session-scoped ``prefect_test_harness``; the event → deployment
trigger path runs against a real ``prefect server start`` (last test).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import plantwatch  # noqa: F401  (telemetry switches first)
from plantwatch import monitoring, orchestration
from plantwatch.config import load_params
from plantwatch.orchestration import PipelineError, ReproResult
from plantwatch.paths import ProjectPaths
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ASSETS = 3
TRAIN_DAYS = 4
BATCH_DAYS = 1
#: Weekdays after the training window (a weekend batch would be compared with weekday reference).
BATCH_STARTS = ["2024-01-09", "2024-01-10", "2024-01-11", "2024-01-12", "2024-01-16"]
#: The "broken" model of the rollback test alerts every 40 readings: isolated alerts, farther apart
#: than train.episode_gap, so 36 alert episodes per asset-day.
BROKEN_ALERT_EVERY = 40
#: Bounds of the real-server test's waits (seconds).
SERVER_START_S = 150
DEPLOYMENT_READY_S = 90
RETRAIN_RUN_S = 240
POLL_S = 1.0
#: The server records a runner's poll in a background task within this long.
POLL_RECORD_S = 20
#: The serving runner looks for new runs this often (default 10 s: most of the event -> run delay).
RUNNER_POLL_S = 2
#: Long enough for DVC to start the hanging stage on a busy machine.
REPRO_TIMEOUT_S = 12

#: The tiny project: small enough for a fast pipeline, loose gates so the first model is promoted,
#: and a drift policy that acts on one drifted batch (k = m = 1; cooldown as in the repo).
TINY_PARAMS: dict[str, dict[str, Any]] = {
    "simulate": {"assets": ASSETS, "days": TRAIN_DAYS, "anomaly_rate": 0.06, "faults": {"gap_minutes": 30}},
    "validate": {"data_docs": False},
    "features": {"windows": [5]},
    "train": {
        "candidates": ["custom"],
        "model": {"n_estimators": 20, "max_fit_rows": 2000, "mcd_max_rows": 300},
    },
    "scale": {"local_workers": 1},
    "gates": {
        "min_pr_auc": 0.0,
        "min_event_recall": 0.0,
        "min_holdout_episodes": 1,  # the tiny holdout holds ~2 fault episodes
        "max_false_alarms_per_asset_day": 1000.0,
        "min_cv_ci_low": 0.0,
        "max_cv_std": 100.0,
        "non_inferiority_tolerance": 1.0,
        "bootstrap_resamples": 100,
    },
    "monitor": {"k": 1, "m": 1},
    "orchestrate": {"retry_delay_s": 1},
}
#: Gates no model can pass (perfect PR-AUC and zero false alarms).
IMPOSSIBLE_GATES = {"min_pr_auc": 1.0, "max_false_alarms_per_asset_day": 1e-9}


# --------------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------------
# prefect_harness: the session's one temporary Prefect API, from tests/conftest.py


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def edit_params(root: Path, update: dict[str, dict[str, Any]]) -> None:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(_merge(yaml.safe_load(path.read_text()), update), sort_keys=False))


def run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)


def make_project(root: Path) -> Path:
    """A git + DVC repo: the repo's dvc.yaml, params (tiny overrides), expectations and the source
    files its stages list as dependencies. The pipeline's first stage simulates the raw data."""
    if not (REPO / "dvc.yaml").is_file():
        pytest.fail(f"{REPO / 'dvc.yaml'} not found: the training pipeline is not defined yet")
    root.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "expectations", root / "expectations")
    shutil.copytree(REPO / "src" / "plantwatch", root / "src" / "plantwatch",
                    ignore=shutil.ignore_patterns("__pycache__"))
    edit_params(root, TINY_PARAMS)
    run(["git", "init", "-q"], root)
    git_id = ["-c", "user.name=plantwatch-test", "-c", "user.email=test@localhost"]
    run(["git", *git_id, "commit", "-q", "--allow-empty", "-m", "tiny project"], root)
    run([orchestration.dvc_executable(), "init", "-q"], root)
    run([orchestration.dvc_executable(), "config", "core.analytics", "false"], root)
    return root


def use_project(monkeypatch: pytest.MonkeyPatch, root: Path) -> ProjectPaths:
    """Point cwd, PLANTWATCH_ROOT and BENTOML_HOME (read by DVC's promote stage too) at ``root``."""
    monkeypatch.chdir(root)
    monkeypatch.setenv("PLANTWATCH_ROOT", str(root))
    monkeypatch.setenv("BENTOML_HOME", str(root / ".bentoml"))
    return ProjectPaths.at(root)


def _skip_dvc_tmp(folder: str, names: list[str]) -> set[str]:
    return {"tmp"} if Path(folder).name == ".dvc" else set()


@dataclass(frozen=True)
class Trained:
    root: Path
    outcome: dict[str, Any]
    flow_run_id: Any

    def copy(self, dest: Path, monkeypatch: pytest.MonkeyPatch) -> ProjectPaths:
        shutil.copytree(self.root, dest, symlinks=True, ignore=_skip_dvc_tmp)
        return use_project(monkeypatch, dest)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Iterator[Trained]:
    """The tiny project after one real ``training_flow`` (dvc repro + promote)."""
    from flows.training import training_flow

    mp = pytest.MonkeyPatch()
    try:
        root = make_project(tmp_path_factory.mktemp("flows") / "trained")
        use_project(mp, root)
        state = training_flow(reason="first model", root=str(root), return_state=True)
        assert state.is_completed(), state.message
        yield Trained(root, state.result(), state.state_details.flow_run_id)
    finally:
        mp.undo()


def audit(paths: ProjectPaths, event: str | None = None) -> list[dict[str, Any]]:
    path = paths.registry / "audit.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [e for e in lines if event is None or e["event"] == event]


def policy_state(paths: ProjectPaths) -> Any:
    return monitoring.load_state(monitoring.MonitoringPaths.of(paths).state)


def write_batch(paths: ProjectPaths, name: str, *, start: str, seed: int, scenario: str = "normal") -> Path:
    """One day of simulated readings of the project's fleet as a landed Parquet batch."""
    from plantwatch.simulate import simulate_fleet

    params = load_params(paths.params)
    frame = simulate_fleet(
        params.simulate, params.data, scenario=scenario, start=pd.Timestamp(start), seed=seed,
        assets=ASSETS, days=BATCH_DAYS,
    )
    path = paths.root / "batches" / f"{name}.parquet"
    path.parent.mkdir(exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def artifact_keys(flow_run_id: Any) -> dict[str, Any]:
    """Artifacts of one flow run (and its tasks), by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found}


# --------------------------------------------------------------------------------------------------
# fast: pure helpers, the retrain core without DVC, routing, deployments
# --------------------------------------------------------------------------------------------------
def test_newest_unmonitored_window_skips_today_and_monitored_days(tmp_path: Path) -> None:
    days = ["2024-05-01", "2024-05-02", "2024-05-03"]
    windows = [tmp_path / f"date={d}" for d in days] + [tmp_path / "not-a-partition"]
    today = date(2024, 5, 3)  # still being written: never picked

    pick = orchestration.newest_unmonitored_window
    assert pick(windows, lambda w: False, today) == tmp_path / "date=2024-05-02"
    # The newest complete day was monitored: nothing new (older days are not backfilled).
    assert pick(windows, lambda w: w.name == "date=2024-05-02", today) is None
    assert pick(windows, lambda w: False, date(2024, 5, 1)) is None


def test_retrain_records_a_broken_pipeline_in_the_audit_log(project: Path) -> None:
    paths = ProjectPaths.at(project)
    params = load_params(paths.params)

    def broken(root: Path) -> ReproResult:
        return ReproResult(returncode=2, seconds=0.1, tail="ERROR: failed to reproduce 'train': boom")

    with pytest.raises(PipelineError, match="boom"):
        orchestration.retrain(paths, params, reason="unit test", batch_id="b-1", repro=broken)
    started, finished = audit(paths, "retrain_started"), audit(paths, "retrain_finished")
    assert [e["batch_id"] for e in started] == ["b-1"]
    assert finished[-1]["status"] == "failed" and "boom" in finished[-1]["refusals"][0]


@pytest.mark.slow
def test_run_repro_timeout_stops_the_running_stage(tmp_path: Path) -> None:
    root = tmp_path / "hang"
    root.mkdir()
    run(["git", "init", "-q"], root)
    run([orchestration.dvc_executable(), "init", "-q"], root)
    (root / "dvc.yaml").write_text(
        "stages:\n  hang:\n    cmd: echo $$ > stage.pid && exec sleep 60\n    outs: [never]\n"
    )
    with pytest.raises(PipelineError, match="did not finish"):
        orchestration.run_repro(root, timeout_s=REPRO_TIMEOUT_S)
    pid = int((root / "stage.pid").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    assert not _alive(pid), "the stage DVC started is still running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is dead, only not reaped by its parent yet
        return fh.read().split()[2] != "Z"


def test_training_flow_retries_a_broken_pipeline_and_releases_the_drift_flag(
    project: Path, prefect_harness: None
) -> None:
    """No DVC repo here: dvc repro fails; the task is retried once, then the flow fails, and the
    drift-triggered retrain's in-progress flag is cleared all the same."""
    from flows.training import training_flow
    from plantwatch.drift import PolicyState, RetrainRequest

    paths = ProjectPaths.at(project)
    mon = monitoring.MonitoringPaths.of(paths)
    mon.root.mkdir(parents=True)
    request = RetrainRequest(batch_id="b-7", decided_batch=3, reason="drift in 1 of 1")
    monitoring.save_state(mon.state, PolicyState(retrain_in_progress=True, retrain_request=request))

    state = training_flow(reason="drift", root=str(project), drift_batch_id="b-7", return_state=True)

    assert state.is_failed()
    assert len(audit(paths, "retrain_started")) == 2  # 1 try + pipeline_retries=1
    assert [e["status"] for e in audit(paths, "retrain_finished")] == ["failed", "failed"]
    assert not policy_state(paths).retrain_in_progress


class _Registry:
    """Audit-only stand-in: the router only writes audit lines."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def audit(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))


def test_retrain_router_emits_the_drift_event_only_when_the_deployment_is_served(
    project: Path,
) -> None:
    from flows.monitoring import RetrainRouter
    from plantwatch.drift import RetrainRequest

    params = load_params(project / "params.yaml")
    request = RetrainRequest(
        batch_id="b-9", decided_batch=4, reason="drift in 2 of 3", drift_share=0.5, drifted_sensors=["flow"]
    )
    sent: list[tuple[str, dict[str, str], dict[str, Any]]] = []

    def emit(event: str, resource: dict[str, str], payload: dict[str, Any]) -> bool:
        sent.append((event, resource, payload))
        return True

    served = RetrainRouter(params, _Registry(), served=lambda: True, emit=emit)
    served(request)
    assert served.route == "event" and served.direct is None
    event, resource, payload = sent[0]
    assert event == params.orchestrate.drift_event
    assert resource == {"prefect.resource.id": f"plantwatch.detector.{params.monitor.project}"}
    assert payload["batch_id"] == "b-9" and "drift in 2 of 3" in payload["reason"]
    assert served.registry.events[0][0] == "retrain_requested"
    assert served.registry.events[0][1]["route"] == "event"

    not_served = RetrainRouter(params, _Registry(), served=lambda: False, emit=emit)
    not_served(request)
    assert not_served.route == "direct" and not_served.direct == request and len(sent) == 1

    refused = RetrainRouter(params, _Registry(), served=lambda: True, emit=lambda *a: False)
    refused(request)
    assert refused.route == "direct" and refused.direct == request and refused.notes


def test_deployments_have_the_schedules_and_the_drift_trigger(project: Path) -> None:
    from flows.deploy import build_deployments

    params = load_params(project / "params.yaml")
    deployments = {(d.flow_name, d.name): d for d in build_deployments(params, project)}
    assert set(deployments) == {
        ("plantwatch-train", "train"),
        ("plantwatch-monitor", "monitor"),
        ("plantwatch-train", "retrain-on-drift"),
    }
    crons = {k: [s.schedule.cron for s in d.schedules] for k, d in deployments.items()}
    assert crons[("plantwatch-train", "train")] == [params.orchestrate.train_cron]
    assert crons[("plantwatch-monitor", "monitor")] == [params.orchestrate.monitor_cron]
    retrain = deployments[("plantwatch-train", "retrain-on-drift")]
    assert crons[("plantwatch-train", "retrain-on-drift")] == []
    assert retrain.concurrency_limit == 1
    (trigger,) = retrain.triggers
    assert trigger.expect == {params.orchestrate.drift_event}
    assert trigger.match.model_dump() == {"prefect.resource.id": "plantwatch.detector.plantwatch"}
    assert trigger.parameters == {
        "reason": "{{ event.payload.reason }}",
        "drift_batch_id": "{{ event.payload.batch_id }}",
        "root": str(project),
    }


def test_retrain_deployment_counts_as_served_only_while_a_runner_polls_it(
    project: Path, prefect_harness: None
) -> None:
    """Registered is not enough (nobody would act on the event); polled recently is."""
    from prefect.client.orchestration import get_client

    from flows.deploy import build_deployments
    from flows.monitoring import retrain_deployment_served

    params = load_params(project / "params.yaml")
    cfg = params.orchestrate
    assert not retrain_deployment_served(cfg)  # not registered on this server
    (retrain,) = [d for d in build_deployments(params, project) if d.name == "retrain-on-drift"]
    deployment_id = retrain.apply()
    try:
        assert not retrain_deployment_served(cfg)  # registered, never polled
        with get_client(sync_client=True) as client:
            client.get_scheduled_flow_runs_for_deployments([deployment_id])  # what a runner does
            # The server records the poll in a background task.
            polled = wait_for(lambda: client.read_deployment(deployment_id).last_polled, POLL_RECORD_S,
                              "the poll to be recorded", interval=POLL_S)
        assert retrain_deployment_served(cfg)
        stale = polled + timedelta(seconds=2 * cfg.deployment_fresh_s)
        assert not retrain_deployment_served(cfg, now=stale)  # its runner is gone
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)  # later tests need the direct path again


# --------------------------------------------------------------------------------------------------
# slow: the real pipeline under the training flow
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_flow_runs_the_dvc_pipeline_and_promotes(trained: Trained) -> None:
    from plantwatch.registry import Registry

    paths = ProjectPaths.at(trained.root)
    out = trained.outcome
    assert out["status"] == "promoted" and out["before"] is None and out["gates_passed"] is True
    assert Registry(paths.root, load_params(paths.params).registry).production_tag() == out["after"]
    events = [e["event"] for e in audit(paths)]
    assert events[0] == "retrain_started" and events[-1] == "retrain_finished"
    assert {"register", "promote"} <= set(events)
    assert audit(paths, "retrain_finished")[-1]["status"] == "promoted"
    assert (paths.root / "dvc.lock").is_file()
    keys = artifact_keys(trained.flow_run_id)
    assert {"plantwatch-gate-report", "plantwatch-gates", "plantwatch-holdout-metrics",
            "plantwatch-retrain-outcome"} <= set(keys)
    assert keys["plantwatch-gate-report"].data == (paths.reports / "gates.md").read_text()
    # The promotion started the post-promotion guard.
    guard = policy_state(paths).guard
    assert guard is not None and guard.model_version == out["after"]


@pytest.mark.slow
def test_failed_gates_leave_production_unchanged_and_record_the_refusal(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> None:
    from flows.training import training_flow
    from plantwatch.registry import Registry

    paths = trained.copy(tmp_path / "proj", monkeypatch)
    registry = Registry(paths.root, load_params(paths.params).registry)
    before = registry.production_tag()
    edit_params(paths.root, {"gates": IMPOSSIBLE_GATES})

    out = training_flow(reason="stricter gates", root=str(paths.root))

    assert out["status"] == "refused" and out["gates_passed"] is False
    assert out["before"] == out["after"] == before == registry.production_tag()
    assert out["refusals"] and "registered as rejected" in out["refusals"][0]
    rejected = [v for v in registry.versions() if v.stage == "rejected"]
    assert len(rejected) == 1
    assert audit(paths, "reject")[-1]["to"] == rejected[0].tag
    assert audit(paths, "retrain_finished")[-1]["status"] == "refused"


# --------------------------------------------------------------------------------------------------
# slow: the monitoring flow (direct retrain path: no served deployment under the test harness)
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_drifted_batch_triggers_exactly_one_retrain(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> None:
    from flows.monitoring import monitoring_flow

    paths = trained.copy(tmp_path / "proj", monkeypatch)
    batch = write_batch(paths, "drifted", start=BATCH_STARTS[0], seed=101, scenario="drift")

    out = monitoring_flow(batch_path=str(batch), root=str(paths.root))

    assert out["drift"] is True and out["retrain"] == "triggered" and out["retrain_route"] == "direct"
    # The batch's validated rows were landed before the decision, so the retrain is "with the new
    # validated data appended": the real pipeline re-ran, the new rows trained, and the outcome is a
    # gate decision (promoted or refused), never "unchanged".
    (landed,) = (paths.root / "data" / "landing").glob("monitored-*.parquet")
    assert len(pd.read_parquet(landed)) == len(pd.read_parquet(batch))
    assert out["retrain_outcome"]["status"] in {"promoted", "refused"}
    train = pd.read_parquet(paths.processed / "train.parquet")
    assert train["timestamp"].max() >= pd.Timestamp(BATCH_STARTS[0])
    holdout = pd.read_parquet(paths.processed / "holdout.parquet")
    assert holdout["timestamp"].max() < pd.Timestamp(BATCH_STARTS[0])  # the frozen holdout did not move
    assert len(audit(paths, "retrain_requested")) == 1
    (started,) = audit(paths, "retrain_started")[1:]  # [0] is the fixture's first training
    assert started["batch_id"] == out["batch_id"] and out["batch_id"] in started["reason"]
    state = policy_state(paths)
    assert state.retrains_triggered == 1 and not state.retrain_in_progress


@pytest.mark.slow
def test_same_distribution_batches_trigger_no_retrain(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> None:
    from flows.monitoring import monitoring_flow

    paths = trained.copy(tmp_path / "proj", monkeypatch)
    for i, start in enumerate(BATCH_STARTS[:2]):
        out = monitoring_flow(batch_path=str(write_batch(paths, f"clean-{i}", start=start, seed=200 + i)))
        assert out["drift"] is False, out["reason"]
        assert out["retrain"] == "not needed" and out["retrain_route"] is None
    assert audit(paths, "retrain_requested") == []
    assert len(audit(paths, "retrain_started")) == 1  # the fixture's first training only
    assert policy_state(paths).retrains_triggered == 0


@pytest.mark.slow
def test_burst_of_drifted_batches_retrains_once_within_the_cooldown(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> None:
    from flows.monitoring import monitoring_flow

    paths = trained.copy(tmp_path / "proj", monkeypatch)
    decisions = []
    for i, start in enumerate(BATCH_STARTS[:3]):
        batch = write_batch(paths, f"drift-{i}", start=start, seed=300 + i, scenario="drift")
        out = monitoring_flow(batch_path=str(batch), root=str(paths.root))
        assert out["drift"] is True
        decisions.append(out["retrain"])
    assert decisions == ["triggered", "cooling down", "cooling down"]
    assert len(audit(paths, "retrain_requested")) == 1
    assert len(audit(paths, "retrain_started")) == 2  # the fixture's + exactly one drift retrain
    assert policy_state(paths).retrains_triggered == 1


@pytest.mark.slow
def test_alert_rate_breach_after_promotion_rolls_back(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> None:
    """A second version goes to production and then raises an alert every 40 readings the next day."""
    from flows.monitoring import monitoring_flow
    from plantwatch import inference_log, scoring
    from plantwatch.registry import Registry
    from plantwatch.registry.promotion import promote_from_gate
    from plantwatch.simulate import simulate_fleet

    paths = trained.copy(tmp_path / "proj", monkeypatch)
    params = load_params(paths.params)
    registry = Registry(paths.root, params.registry)
    first = registry.production_tag()
    second = promote_from_gate(registry, paths, params, reason="second version").version.tag
    assert registry.production_tag() == second

    # The inference log of one (past) day, scored by the new version, which alerts far too often.
    day = datetime.fromisoformat(BATCH_STARTS[2])
    readings = simulate_fleet(params.simulate, params.data, start=pd.Timestamp(day), variant=400,
                              assets=ASSETS, days=BATCH_DAYS)  # the same fleet on another day
    _, bundle = registry.load_production()
    results = scoring.score_readings(bundle, readings)
    results.loc[results.index[::BROKEN_ALERT_EVERY], scoring.DECISION] = "alert"
    log_frame = inference_log.build_log_frame(
        readings, results, sensors=params.data.sensor_names, request_id="r-1", model_version=second,
        threshold=bundle.threshold_, source=inference_log.SOURCE_BATCH, logged_at=day + timedelta(hours=23),
    )
    inference_log.write_log(log_frame, paths.inference_log, params.data.sensor_names)

    out = monitoring_flow(root=str(paths.root))  # no path: the newest complete inference-log day

    assert out["batch_id"].startswith(f"date-{BATCH_STARTS[2]}")
    assert out["production_sync"] and second in out["production_sync"]
    assert out["rollback"] is True and "alert rate" in out["rollback_reason"]
    assert registry.production_tag() == first
    rollback = audit(paths, "rollback")[-1]
    assert rollback["from"] == second and rollback["to"] == first
    assert audit(paths, "guard_rollback")[-1]["to"] == first
    # The same window is not monitored twice.
    assert monitoring_flow(root=str(paths.root))["status"] == "idle"


# --------------------------------------------------------------------------------------------------
# slow: a real Prefect server, the served deployments and the drift event trigger
# --------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    orchestration.stop_process_group(proc, grace_s=20)


@pytest.mark.slow
def test_drift_event_starts_the_retrain_deployment_on_a_real_server(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deploy import server_url, start_server, wait_healthy

    paths = trained.copy(tmp_path / "proj", monkeypatch)
    batch = write_batch(paths, "drifted", start=BATCH_STARTS[0], seed=500, scenario="drift")
    home = tmp_path / "prefect-home"
    port = _free_port()
    url = server_url("127.0.0.1", port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home), PREFECT_API_URL=url, PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PLANTWATCH_ROOT=str(paths.root), BENTOML_HOME=str(paths.root / ".bentoml"),
        PREFECT_RUNNER_POLL_FREQUENCY=str(RUNNER_POLL_S),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    logs = [home / "server.log", tmp_path / "serve.log", tmp_path / "monitor.log"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(start_server("127.0.0.1", port, home, logs[0]))
        wait_healthy(url, SERVER_START_S, procs[0])
        with logs[1].open("wb") as out:
            serve = [sys.executable, "-m", "flows.deploy", "serve"]
            procs.append(subprocess.Popen(serve, cwd=paths.root, env=env, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:

            def served() -> Any:
                try:
                    dep = client.read_deployment_by_name("plantwatch-train/retrain-on-drift")
                except Exception:
                    return None
                return dep if dep.last_polled is not None else None

            deployment = wait_for(served, DEPLOYMENT_READY_S, "the served retrain deployment", POLL_S, logs)

            with logs[2].open("wb") as out:
                done = subprocess.run([sys.executable, "-m", "flows.monitoring", str(batch)], cwd=paths.root,
                                      env=env, stdout=out, stderr=subprocess.STDOUT, timeout=RETRAIN_RUN_S)
            assert done.returncode == 0, logs[2].read_text()[-3000:]
            (requested,) = audit(paths, "retrain_requested")
            assert requested["route"] == "event"

            def finished_run() -> Any:
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
                )
                done = [r for r in runs if r.state is not None and r.state.is_final()]
                return done[0] if done else None

            flow_run = wait_for(finished_run, RETRAIN_RUN_S, "the retrain-on-drift run", POLL_S, logs)
        assert flow_run.state.is_completed(), flow_run.state
        assert flow_run.parameters["drift_batch_id"] == requested["batch_id"]
        assert requested["batch_id"] in flow_run.parameters["reason"]
        finished = audit(paths, "retrain_finished")[-1]
        # The deployment's run trained on the batch the monitoring flow landed: a gate decision.
        assert finished["batch_id"] == requested["batch_id"]
        assert finished["status"] in {"promoted", "refused"}
        assert not policy_state(paths).retrain_in_progress  # cleared by the served training flow
    finally:
        for proc in reversed(procs):
            _stop(proc)
