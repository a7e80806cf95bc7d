"""Prefect flow: monitor one batch — validate → drift → policy → workspace snapshot → act.

Thin wiring over ``plantwatch.monitoring`` (the monitoring engineer's core). What this flow adds:

* which batch: the given path, or the newest complete inference-log day not monitored yet;
* the retrain action the policy calls when it triggers. If a Prefect server serves the
  ``plantwatch-train/retrain-on-drift`` deployment, the flow emits the drift event and the
  deployment's trigger starts the retrain there (concurrency limit 1). Otherwise the retrain runs
  right here, as a subflow, after the monitoring state is saved and its lock released. Either way
  the training flow clears the "retrain in progress" flag when the outcome is known;
* the rollback action the post-promotion guard calls: ``Registry.rollback`` + an audit line;
* a Markdown artifact with the decision.

Run it: ``python flows/monitoring.py [BATCH]`` (from the project root), or the ``monitor``
deployment of ``flows/deploy.py`` (hourly).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

import plantwatch  # noqa: F401  (telemetry switches first)
from flows.training import training_flow
from plantwatch import monitoring
from plantwatch.config import OrchestrateConfig, Params, load_params
from plantwatch.drift import PolicyDecision, RetrainRequest
from plantwatch.errors import PlantwatchError
from plantwatch.ingest import land_batch
from plantwatch.orchestration import (
    MONITOR_FLOW,
    RETRAIN_DEPLOYMENT,
    TRAIN_FLOW,
    drift_event_payload,
    drift_resource_id,
    newest_unmonitored_window,
    retrain_reason,
)
from plantwatch.paths import ProjectPaths

#: Prefect artifact key of the per-batch decision.
DECISION_KEY = "plantwatch-drift-decision"
ROUTE_EVENT = "event"
ROUTE_DIRECT = "direct"

log = logging.getLogger(__name__)

#: ``emit(event, resource, payload) -> bool`` (True: the event was handed to Prefect).
Emitter = Callable[[str, dict[str, str], dict[str, Any]], bool]


# --------------------------------------------------------------------------------------------------
# Prefect plumbing: is the retrain deployment served, and the event itself
# --------------------------------------------------------------------------------------------------
def retrain_deployment_served(cfg: OrchestrateConfig, now: datetime | None = None) -> bool:
    """True when a Prefect server is configured and a runner serves the retrain deployment.

    "Exists" is not enough: a deployment outlives the ``prefect.serve`` process that ran it, and an
    event nobody acts on would leave the retrain flagged as in progress until the policy's timeout.
    So the deployment must be unpaused and polled by its runner within ``deployment_fresh_s``.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        return False
    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(f"{TRAIN_FLOW}/{RETRAIN_DEPLOYMENT}")
    except ObjectNotFound:
        return False
    except Exception as err:  # server down or unreachable: retrain here instead
        log.warning("Prefect server not reachable (%s: %s); retraining in this flow", type(err).__name__, err)
        return False
    if deployment.paused or deployment.last_polled is None:
        return False
    age = ((now or datetime.now(UTC)) - deployment.last_polled).total_seconds()
    return age <= cfg.deployment_fresh_s


def prefect_emit(event: str, resource: dict[str, str], payload: dict[str, Any]) -> bool:
    """Hand the drift event to Prefect's events worker; False when Prefect could not take it."""
    from prefect.events import emit_event

    return emit_event(event, resource=resource, payload=payload) is not None


# --------------------------------------------------------------------------------------------------
# the actions monitor_batch calls (under the monitoring state lock: quick, no training here)
# --------------------------------------------------------------------------------------------------
@dataclass
class RetrainRouter:
    """Retrain action for ``monitor_batch``: emit the drift event, or queue a retrain for this flow.

    Called under the monitoring state lock, so it never trains itself; a direct retrain is left in
    ``direct`` and the flow runs it once the state is saved.
    """

    params: Params
    registry: Any
    served: Callable[[], bool]
    emit: Emitter
    route: str | None = None
    direct: RetrainRequest | None = None
    notes: list[str] = field(default_factory=list)

    def __call__(self, request: RetrainRequest) -> str:
        cfg = self.params.orchestrate
        payload = drift_event_payload(
            request.batch_id,
            request.reason,
            drift_share=request.drift_share,
            drifted_sensors=request.drifted_sensors,
            decided_batch=request.decided_batch,
        )
        self.route = ROUTE_DIRECT
        if self.served():
            resource = {"prefect.resource.id": drift_resource_id(self.params)}
            if self.emit(cfg.drift_event, resource, payload):
                self.route = ROUTE_EVENT
            else:
                self.notes.append("drift event not accepted by Prefect; retraining in this flow")
        if self.route == ROUTE_DIRECT:
            self.direct = request
        self.registry.audit(
            "retrain_requested",
            reason=payload["reason"],
            batch_id=request.batch_id,
            route=self.route,
            drift_event=cfg.drift_event if self.route == ROUTE_EVENT else None,
            drift_share=request.drift_share,
            drifted_sensors=request.drifted_sensors,
        )
        if self.route == ROUTE_EVENT:
            return f"retrain requested: event {cfg.drift_event} emitted for {RETRAIN_DEPLOYMENT}"
        return "retrain requested: runs in this flow (no served retrain deployment)"


def rollback_action(registry: Any) -> Callable[[PolicyDecision], str | None]:
    """Rollback action: the monitoring core's registry rollback, plus an audit line naming the batch."""
    roll = monitoring.registry_rollback(registry)

    def act(decision: PolicyDecision) -> str | None:
        before = registry.production_tag()
        now = roll(decision)
        registry.audit(
            "guard_rollback",
            reason=decision.rollback_reason,
            batch_id=decision.batch_id,
            from_=before,
            to=now,
        )
        return now

    return act


# --------------------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------------------
def _is_monitored(state: Any) -> Callable[[Path], bool]:
    def seen(window: Path) -> bool:
        # A window's batch id is "<name>-<content hash>"; any id with its name counts as monitored.
        name = monitoring.batch_id_for(window).rsplit("-", 1)[0]
        return any(b.rsplit("-", 1)[0] == name for b in state.seen_batches)

    return seen


@task(name="find-window")
def find_window_task(root: str) -> str | None:
    """The newest complete inference-log day not monitored yet (None: nothing new to look at)."""
    paths = ProjectPaths.at(root)
    if not paths.inference_log.is_dir():
        return None
    state = monitoring.load_state(monitoring.MonitoringPaths.of(paths).state)
    windows = [p for p in paths.inference_log.iterdir() if p.is_dir()]
    window = newest_unmonitored_window(windows, _is_monitored(state), datetime.now(UTC).date())
    return None if window is None else str(window)


@task(name="sync-production")
def sync_task(root: str) -> str | None:
    """Start the post-promotion guard when production changed since the last run."""
    from plantwatch.registry import Registry

    paths = ProjectPaths.at(root)
    params = load_params(paths.params)
    try:
        return monitoring.sync_production(paths, params, Registry(paths.root, params.registry))
    except PlantwatchError as err:  # no production model yet: drift monitoring still works
        get_run_logger().warning("post-promotion guard not synced: %s", err)
        return None


def decision_markdown(out: dict[str, Any]) -> str:
    """The batch's verdict as Markdown (Prefect UI)."""
    share = out.get("drift_share")
    shown = "" if share is None else f", share {share:.2f}"
    lines = [
        f"## Batch `{out['batch_id']}`: retrain **{out['retrain']}**",
        "",
        f"- rows: {out['rows']} ({out['rows_checked']} checked)",
        f"- drift: {out['drift']}{shown} — {out['reason']}",
        f"- drifted sensors: {', '.join(out.get('drifted_sensors') or []) or 'none'}",
        f"- retrain: {out['retrain']} — {out['retrain_reason']} (route: {out.get('retrain_route')})",
        f"- guard: {out['guard']}" + (f" — ROLLBACK: {out['rollback_reason']}" if out["rollback"] else ""),
        f"- report: {out['report']}",
    ]
    lines += [f"- {a}" for a in out["notes"] + out["actions"]]
    lines += [f"- ERROR: {e}" for e in out["errors"]]
    return "\n".join(lines) + "\n"


def landing_validator(
    validate: Callable[[Any], tuple[Any, Any]], params: Params, paths: ProjectPaths, batch_id: str
) -> Callable[[Any], tuple[Any, Any]]:
    """Validate a batch, then land its clean rows for the next retrain.

    Landing happens before the drift decision, so a retrain triggered by this batch (in this flow or
    in the deployment the drift event starts) always trains on it: "retrain with the new validated
    data appended". Quarantined rows never reach training.
    """

    def run(frame: Any) -> tuple[Any, Any]:
        clean, summary = validate(frame)
        if len(clean):
            land_batch(clean, params.data, paths, f"monitored-{batch_id}")
        return clean, summary

    return run


@task(name="check-drift-and-decide")
def monitor_task(batch_path: str, root: str) -> dict[str, Any]:
    """Validate, check drift, decide, store snapshot + state, emit/queue a retrain, roll back if needed.

    Not retried: the batch is recorded as monitored once its state is saved.
    """
    from plantwatch.registry import Registry

    paths = ProjectPaths.at(root)
    params = load_params(paths.params)
    path = Path(batch_path)
    registry = Registry(paths.root, params.registry)
    router = RetrainRouter(
        params, registry, served=lambda: retrain_deployment_served(params.orchestrate), emit=prefect_emit
    )
    batch_id = monitoring.batch_id_for(path)
    outcome = monitoring.monitor_batch(
        monitoring.load_batch(path, params.data.default_asset),
        params=params,
        paths=paths,
        batch_id=batch_id,
        validate=landing_validator(monitoring.gx_validator(params, paths, batch_id), params, paths, batch_id),
        retrain=router,
        rollback=rollback_action(registry),
    )
    out = outcome.to_dict()
    out["notes"] = out["notes"] + router.notes
    out["retrain_route"] = router.route
    out["direct_request"] = None if router.direct is None else router.direct.model_dump()
    get_run_logger().info(
        "batch %s: drift %s, retrain %s (%s), guard %s%s",
        out["batch_id"],
        out["drift"],
        out["retrain"],
        router.route or "-",
        out["guard"],
        f", rollback: {out['rollback_reason']}" if out["rollback"] else "",
    )
    create_markdown_artifact(decision_markdown(out), key=DECISION_KEY, description="Drift decision")
    return out


# --------------------------------------------------------------------------------------------------
# the flow
# --------------------------------------------------------------------------------------------------
@flow(name=MONITOR_FLOW, log_prints=False)
def monitoring_flow(batch_path: str | None = None, root: str | None = None) -> dict[str, Any]:
    """Monitor ``batch_path`` (default: the newest complete inference-log day not monitored yet).

    Returns the monitor outcome (``plantwatch monitor --json`` fields) plus ``retrain_route``
    (``event`` / ``direct`` / None) and, after a direct retrain, its outcome under ``retrain_outcome``.
    """
    paths = ProjectPaths.at(root)
    root = str(paths.root)
    target = batch_path or find_window_task(root)
    if target is None:
        get_run_logger().info("no complete inference-log window left to monitor in %s", paths.inference_log)
        return {"status": "idle", "batch_id": None}
    synced = sync_task(root)
    out = monitor_task(str(target), root)
    out["status"] = "monitored"
    out["production_sync"] = synced
    request = out["direct_request"]
    if request is not None:
        # The state is saved and its lock released: the retrain may take as long as it needs.
        out["retrain_outcome"] = training_flow(
            reason=retrain_reason(request["batch_id"], request["reason"]),
            root=root,
            drift_batch_id=request["batch_id"],
        )
    if out["errors"]:
        raise PlantwatchError(f"monitoring batch {out['batch_id']}: {'; '.join(out['errors'])}")
    return out


def main(argv: list[str]) -> int:
    """``python -m flows.monitoring [BATCH]`` from the project root; exit code 1/2 on a plantwatch error."""
    try:
        result = monitoring_flow(batch_path=argv[0] if argv else None, root=str(Path.cwd()))
    except PlantwatchError as err:
        log.error("%s", err)
        return err.exit_code
    log.info("%s", json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover - manual entry point
    logging.basicConfig(level=logging.INFO)
    sys.exit(main(sys.argv[1:]))
