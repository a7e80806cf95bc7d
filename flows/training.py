"""Prefect flow: retrain = the DVC pipeline (ingest → … → gate → promote) + registry, as tasks.

Thin wiring over ``plantwatch.orchestration``: the flow adds retries, logs, and artifacts a person
reads in the Prefect UI (the gate report as Markdown, the gates and holdout metrics as tables, the
retrain outcome). When the retrain ends — promoted, refused, unchanged or failed — the monitoring
state hears about it: a promotion starts the post-promotion guard, and a drift-triggered retrain
clears the "retrain in progress" flag, so the drift policy may act again after its cooldown.

Run it: ``python flows/training.py [reason]`` (from the project root), or the ``train`` and
``retrain-on-drift`` deployments of ``flows/deploy.py``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

import plantwatch  # noqa: F401  (telemetry switches first)
from plantwatch.config import load_params
from plantwatch.errors import PlantwatchError
from plantwatch.orchestration import TRAIN_FLOW, read_gates, retrain
from plantwatch.paths import ProjectPaths

#: Prefect artifact keys (lowercase letters, digits and dashes only).
GATE_REPORT_KEY = "plantwatch-gate-report"
GATES_TABLE_KEY = "plantwatch-gates"
HOLDOUT_TABLE_KEY = "plantwatch-holdout-metrics"
OUTCOME_KEY = "plantwatch-retrain-outcome"

log = logging.getLogger(__name__)


@task(name="run-pipeline-and-promote")
def pipeline_task(root: str, reason: str, drift_batch_id: str | None = None) -> dict[str, Any]:
    """``dvc repro`` then promotion (or a recorded refusal); a broken pipeline raises and is retried."""
    paths = ProjectPaths.at(root)
    params = load_params(paths.params)
    outcome = retrain(paths, params, reason=reason, batch_id=drift_batch_id)
    get_run_logger().info(
        "retrain %s: %s -> %s (chosen %s)%s",
        outcome.status,
        outcome.before,
        outcome.after,
        outcome.chosen,
        "; " + "; ".join(outcome.refusals) if outcome.refusals else "",
    )
    return outcome.to_dict()


def _cell(value: Any) -> Any:
    """A table cell Prefect can store as JSON (NaN/inf are not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def holdout_rows(holdout: dict[str, Any]) -> list[dict[str, Any]]:
    """metrics/holdout.json ({candidate: {metric: value}}) as table rows, one per candidate."""
    return [
        {"candidate": name, **{k: _cell(v) for k, v in vals.items()}}
        for name, vals in holdout.items()
        if isinstance(vals, dict)
    ]


def gate_rows(gates: dict[str, Any]) -> list[dict[str, Any]]:
    """metrics/gates.json's gates as table rows (name, value, threshold, passed)."""
    return [
        {k: _cell(g.get(k)) for k in ("name", "value", "threshold", "passed")}
        for g in gates.get("gates", []) or []
        if isinstance(g, dict)
    ]


def outcome_markdown(outcome: dict[str, Any]) -> str:
    """The retrain outcome as a short Markdown note for the Prefect UI."""
    lines = [
        f"## Retrain: **{outcome['status']}**",
        "",
        f"- reason: {outcome['reason']}",
        f"- production before: `{outcome['before']}`",
        f"- production after: `{outcome['after']}`",
        f"- chosen candidate: {outcome.get('chosen')}, gates passed: {outcome.get('gates_passed')}",
        f"- took {outcome.get('seconds', 0.0):.0f} s",
    ]
    lines += [f"- refused: {r}" for r in outcome.get("refusals", [])]
    return "\n".join(lines) + "\n"


@task(name="publish-artifacts")
def publish_task(root: str, outcome: dict[str, Any]) -> list[str]:
    """The outcome, gate report, gates and holdout metrics as Prefect artifacts; returns their keys."""
    paths = ProjectPaths.at(root)
    made = [OUTCOME_KEY]
    create_markdown_artifact(outcome_markdown(outcome), key=OUTCOME_KEY, description="Retrain outcome")
    report = paths.reports / "gates.md"
    if report.is_file():
        create_markdown_artifact(report.read_text(), key=GATE_REPORT_KEY, description="Gate report")
        made.append(GATE_REPORT_KEY)
    gates = read_gates(paths)
    if gates is not None:
        create_table_artifact(gate_rows(gates), key=GATES_TABLE_KEY, description="Quality gates")
        made.append(GATES_TABLE_KEY)
    holdout = paths.metrics / "holdout.json"
    if holdout.is_file():
        rows = holdout_rows(json.loads(holdout.read_text()))
        create_table_artifact(rows, key=HOLDOUT_TABLE_KEY, description="Holdout metrics per candidate")
        made.append(HOLDOUT_TABLE_KEY)
    return made


@task(name="settle-monitoring")
def settle_task(root: str, promoted: bool, drift_batch_id: str | None) -> list[str]:
    """Tell the monitoring state how the retrain ended; returns what it did.

    A promotion starts the post-promotion guard for the new version (which also ends the retrain in
    progress). A drift-triggered retrain that did not promote clears its own in-progress flag — only
    its own: a retrain requested for another batch is left alone.
    """
    from plantwatch import monitoring
    from plantwatch.registry import Registry

    paths = ProjectPaths.at(root)
    params = load_params(paths.params)
    logger = get_run_logger()
    done: list[str] = []
    if promoted:
        try:
            synced = monitoring.sync_production(paths, params, Registry(paths.root, params.registry))
            if synced:
                done.append(synced)
        except PlantwatchError as err:  # the monitoring flow retries the sync on its next run
            logger.warning("post-promotion guard not started: %s", err)
    if drift_batch_id:
        state = monitoring.load_state(monitoring.MonitoringPaths.of(paths).state)
        request = state.retrain_request
        if state.retrain_in_progress and request is not None and request.batch_id == drift_batch_id:
            monitoring.record_retrain_finished(paths)
            done.append(f"retrain for batch {drift_batch_id} marked finished")
    for line in done:
        logger.info(line)
    return done


@flow(name=TRAIN_FLOW, log_prints=False)
def training_flow(
    reason: str = "scheduled retrain", root: str | None = None, drift_batch_id: str | None = None
) -> dict[str, Any]:
    """Retrain, gate and promote (or refuse) in the project at ``root`` (default: cwd).

    ``drift_batch_id``: the monitored batch whose drift asked for this retrain (set by the drift
    trigger and by the monitoring flow), so that its in-progress flag is cleared when it ends.
    """
    paths = ProjectPaths.at(root)
    cfg = load_params(paths.params).orchestrate
    retrying = pipeline_task.with_options(retries=cfg.pipeline_retries, retry_delay_seconds=cfg.retry_delay_s)
    root = str(paths.root)
    promoted = False
    try:
        outcome = retrying(root, reason, drift_batch_id)
        promoted = outcome["status"] == "promoted"
    finally:
        # Also after a failed pipeline: the drift policy must not wait for a retrain that is over.
        settle_task(root, promoted, drift_batch_id)
    publish_task(root, outcome)
    return outcome


def main(argv: list[str]) -> int:
    """``python -m flows.training [REASON]`` from the project root; exit code 1/2 on a plantwatch error."""
    try:
        outcome = training_flow(reason=" ".join(argv) or "manual retrain", root=str(Path.cwd()))
    except PlantwatchError as err:
        log.error("%s", err)
        return err.exit_code
    log.info("%s", json.dumps(outcome, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover - manual entry point
    logging.basicConfig(level=logging.INFO)
    sys.exit(main(sys.argv[1:]))
