"""Prefect flow: retrain = the DVC pipeline (ingest → … → gate → promote) + registry, as tasks.

Thin wiring over ``plantwatch.orchestration``: the flow adds retries, logs, and artifacts a person
reads in the Prefect UI (the gate report as Markdown, holdout metrics as a table).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

import plantwatch  # noqa: F401  (telemetry switches first)
from plantwatch.config import load_params
from plantwatch.orchestration import retrain
from plantwatch.paths import ProjectPaths


@task(name="run-pipeline-and-promote")
def pipeline_task(root: str, reason: str) -> dict[str, Any]:
    """``dvc repro`` then promotion (or a recorded refusal); a broken pipeline raises and is retried."""
    paths = ProjectPaths.at(root)
    params = load_params(paths.params)
    outcome = retrain(paths, params, reason=reason)
    get_run_logger().info(
        "retrain %s: %s -> %s (chosen %s)", outcome.status, outcome.before, outcome.after, outcome.chosen
    )
    return outcome.to_dict()


@task(name="publish-artifacts")
def publish_task(root: str) -> None:
    """The gate report and holdout metrics as Prefect artifacts (keys: lowercase, digits, dashes)."""
    paths = ProjectPaths.at(root)
    report = paths.reports / "gates.md"
    if report.is_file():
        create_markdown_artifact(report.read_text(), key="plantwatch-gate-report", description="Gate report")
    holdout = paths.metrics / "holdout.json"
    if holdout.is_file():
        rows = [{"candidate": name, **vals} for name, vals in json.loads(holdout.read_text()).items()]
        create_table_artifact(rows, key="plantwatch-holdout-metrics", description="Holdout metrics")


@flow(name="plantwatch-train", log_prints=False)
def training_flow(reason: str = "scheduled retrain", root: str | None = None) -> dict[str, Any]:
    """Retrain, gate and promote (or refuse) in the project at ``root`` (default: cwd)."""
    paths = ProjectPaths.at(root)
    cfg = load_params(paths.params).orchestrate
    retrying = pipeline_task.with_options(retries=cfg.pipeline_retries, retry_delay_seconds=cfg.retry_delay_s)
    root = str(paths.root)
    outcome = retrying(root, reason)
    publish_task(root)
    return outcome


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(training_flow(root=str(Path.cwd())), indent=2))
