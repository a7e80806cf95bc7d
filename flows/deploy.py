"""Serve plantwatch's Prefect deployments from this process (``prefect.serve``: no work pool needed).

Deployments (schedules and names from the ``orchestrate:`` block of params.yaml):

* ``plantwatch-train/train`` — weekly retrain (``train_cron``);
* ``plantwatch-monitor/monitor`` — hourly monitoring of the newest complete inference-log day
  (``monitor_cron``);
* ``plantwatch-train/retrain-on-drift`` — no schedule; a ``DeploymentEventTrigger`` starts it when the
  monitoring flow emits ``drift_event`` for this project's resource, with the event's reason and batch
  id as parameters. Concurrency limit 1: a second drift event waits for the running retrain.

Why ``prefect.serve`` rather than ``prefect.yaml`` + a work pool + a worker: one process, nothing else
to start or keep in sync, and the served flows run in the project's own venv and folder. Schedules
and triggers need a real ``prefect server start`` (the temporary server refuses to schedule):
``make deploy`` runs ``python -m flows.deploy ensure-server`` (starts one in the background unless
it already answers) and then ``python -m flows.deploy serve`` from the project root. Stop serving
with Ctrl-C or SIGTERM (schedules are paused on shutdown); stop the server with
``kill -TERM $(cat .prefect/server.pid)`` (a background process ignores SIGINT).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

import plantwatch  # noqa: F401  (telemetry switches first)
from flows.monitoring import monitoring_flow
from flows.training import training_flow
from plantwatch.config import Params, load_params
from plantwatch.errors import PlantwatchError, UsageError
from plantwatch.orchestration import (
    MONITOR_DEPLOYMENT,
    RETRAIN_DEPLOYMENT,
    TRAIN_DEPLOYMENT,
    drift_resource_id,
)
from plantwatch.paths import ProjectPaths

log = logging.getLogger(__name__)

#: At most one run of each deployment at a time (two retrains would meet on DVC's lock).
CONCURRENCY = 1
TAGS = ["plantwatch"]
#: Health-check polling of a starting server (seconds).
HEALTH_PROBE_S = 2.0
HEALTH_POLL_S = 0.5


def drift_trigger(params: Params, root: Path) -> DeploymentEventTrigger:
    """The trigger of ``retrain-on-drift``: one run per drift event of this project's detector."""
    return DeploymentEventTrigger(
        name=f"{params.monitor.project}-drift-retrain",
        description="retrain when the monitoring flow's drift policy asks for it",
        expect={params.orchestrate.drift_event},
        match={"prefect.resource.id": drift_resource_id(params)},
        parameters={
            "reason": "{{ event.payload.reason }}",
            "drift_batch_id": "{{ event.payload.batch_id }}",
            "root": str(root),
        },
    )


def build_deployments(params: Params, root: Path) -> list[Any]:
    """The three runner deployments (not yet sent to any server)."""
    cfg = params.orchestrate
    return [
        training_flow.to_deployment(
            name=TRAIN_DEPLOYMENT,
            cron=cfg.train_cron,
            parameters={"reason": "scheduled weekly retrain", "root": str(root)},
            concurrency_limit=CONCURRENCY,
            tags=TAGS,
            description="Weekly retrain: dvc repro + gates + promote (or a recorded refusal).",
        ),
        monitoring_flow.to_deployment(
            name=MONITOR_DEPLOYMENT,
            cron=cfg.monitor_cron,
            parameters={"root": str(root)},
            concurrency_limit=CONCURRENCY,
            tags=TAGS,
            description="Hourly drift check of the newest complete inference-log day.",
        ),
        training_flow.to_deployment(
            name=RETRAIN_DEPLOYMENT,
            parameters={"root": str(root)},
            triggers=[drift_trigger(params, root)],
            concurrency_limit=CONCURRENCY,
            tags=TAGS,
            description=f"Retrain started by the {cfg.drift_event} event of the monitoring flow.",
        ),
    ]


def server_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/api"


def server_healthy(url: str, timeout_s: float = HEALTH_PROBE_S) -> bool:
    """True when a Prefect server answers its health check at ``url`` (``.../api``)."""
    try:
        return httpx.get(f"{url}/health", timeout=timeout_s).status_code == HTTPStatus.OK
    except httpx.HTTPError:
        return False


def start_server(host: str, port: int, home: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """``prefect server start`` in the background, in its own session, logging to ``log_path``.

    Its own session: it must outlive ``make deploy``'s shell and must not receive the terminal's
    Ctrl-C meant for the serving process. Stop it with SIGTERM (it ignores SIGINT in the background).
    """
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PREFECT_HOME=str(home), **plantwatch.offline.TELEMETRY_SWITCHES)
    env.pop("PREFECT_API_URL", None)  # the server itself must not look for another one
    prefect = Path(sys.executable).parent / "prefect"
    cmd = [str(prefect), "server", "start", "--host", host, "--port", str(port)]
    with log_path.open("ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll the health check until it answers; ``UsageError`` on timeout or when ``proc`` died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server_healthy(url):
            return
        if proc is not None and proc.poll() is not None:
            raise UsageError(f"prefect server exited with code {proc.returncode} (see its log)")
        time.sleep(HEALTH_POLL_S)
    raise UsageError(f"prefect server at {url} not healthy after {timeout_s:g} s")


def ensure_server(params: Params, home: Path) -> str:
    """The server's API URL; starts ``prefect server start`` first when nothing answers there.

    Writes ``server.pid`` and ``server.log`` into ``home`` (``$PREFECT_HOME``) for whoever stops it.
    """
    cfg = params.orchestrate
    url = server_url(cfg.server_host, cfg.server_port)
    if server_healthy(url):
        log.info("prefect server already up at %s", url)
        return url
    proc = start_server(cfg.server_host, cfg.server_port, home, home / "server.log")
    (home / "server.pid").write_text(f"{proc.pid}\n")
    log.info("started prefect server (pid %d) at %s; waiting for it", proc.pid, url)
    wait_healthy(url, cfg.server_start_timeout_s, proc)
    return url


def serve_all(root: str | None = None) -> None:
    """Register the deployments with the server at ``PREFECT_API_URL`` and run them until SIGTERM."""
    from prefect import serve
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise UsageError("PREFECT_API_URL is not set: start `prefect server start` first (make deploy does)")
    paths = ProjectPaths.at(root)
    deployments = build_deployments(load_params(paths.params), paths.root)
    log.info("serving %d deployments for %s", len(deployments), paths.root)
    serve(*deployments)


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.deploy serve | ensure-server`` (make deploy runs both)."""
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["serve", "ensure-server"])
    args = parser.parse_args(argv)
    try:
        if args.command == "ensure-server":
            paths = ProjectPaths.at()
            home = Path(os.environ.get("PREFECT_HOME", paths.root / ".prefect"))
            sys.stdout.write(ensure_server(load_params(paths.params), home) + "\n")
        else:
            serve_all()
    except PlantwatchError as err:
        sys.stderr.write(f"error: {err}\n")
        return err.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover - make deploy
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
