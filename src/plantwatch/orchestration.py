"""Run the training pipeline (DVC) and promotion as one retrain, for the CLI, flows and monitoring.

Why DVC in a subprocess: ``dvc repro`` is the one source of truth of what must rerun (it skips
stages whose deps and params did not change) and the same command a person types. Promotion is the
registry's own function, so a retrain whose gates fail still registers the refused version with its
reasons (the ``promote`` DVC stage never runs after a failed gate).

Also here (pure, Prefect-free) because the flows, the CLI and tests share them: the names of the
Prefect flows and deployments, the drift event's resource and payload, and which inference-log
window the scheduled monitor looks at next.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from plantwatch.config import Params
from plantwatch.errors import GateFailed, PlantwatchError
from plantwatch.paths import ProjectPaths

log = logging.getLogger(__name__)

#: Prefect names (flows/ and the monitoring flow's "is the retrain deployment served?" check).
TRAIN_FLOW = "plantwatch-train"
MONITOR_FLOW = "plantwatch-monitor"
TRAIN_DEPLOYMENT = "train"
MONITOR_DEPLOYMENT = "monitor"
RETRAIN_DEPLOYMENT = "retrain-on-drift"
#: Prefix of the drift event's resource id; the project name (``monitor.project``) follows it.
RESOURCE_PREFIX = "plantwatch.detector"
#: Lines of DVC output kept with a result (the rest goes to the debug log).
TAIL_LINES = 12
#: Seconds between SIGTERM and SIGKILL when a timed-out pipeline is stopped.
KILL_GRACE_S = 10.0
#: Inference-log day partitions: ``data/inference/date=YYYY-MM-DD``.
PARTITION_PREFIX = "date="


#: The last DVC stage; a retrain reproduces everything upstream of it.
PROMOTE_STAGE = "promote"


class PipelineError(PlantwatchError):
    """``dvc repro`` failed for another reason than a gate (a broken stage, a lock, bad data)."""


@dataclass
class ReproResult:
    returncode: int
    seconds: float
    tail: str


@dataclass
class RetrainOutcome:
    """What one retrain did: ``promoted``, ``refused`` (a gate failed), ``unchanged`` (nothing new to
    train on: DVC reran nothing) — a broken pipeline raises ``PipelineError`` instead."""

    status: str
    reason: str
    before: str | None
    after: str | None
    gates_passed: bool | None = None
    chosen: str | None = None
    refusals: list[str] = field(default_factory=list)
    seconds: float = 0.0
    batch_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tool_env() -> dict[str, str]:
    """The environment for DVC stage commands: our interpreter's bin dir first on PATH.

    A DVC stage runs ``plantwatch ...`` / ``python ...``; that must be this venv's, not whatever the
    caller's PATH happens to have first (library-facts: DVC uses the first ``python`` on PATH).
    """
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def dvc_executable() -> str:
    """The ``dvc`` next to our interpreter (falls back to PATH)."""
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else (shutil.which("dvc") or "dvc")


def stop_process_group(proc: subprocess.Popen[Any], grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the whole process group (e.g. DVC and the stage it runs), SIGKILL after a grace period.

    SIGTERM, not SIGINT: processes started in the background ignore SIGINT.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_repro(
    root: Path,
    *,
    targets: Sequence[str] = (),
    experiment: bool = False,
    set_params: dict[str, Any] | None = None,
    timeout_s: float | None = None,
) -> ReproResult:
    """``dvc repro`` (or ``dvc exp run -S k=v`` for an experiment) in ``root``; DVC's log at debug level.

    Runs in its own process group so that a timeout stops the stage DVC started too, not only DVC
    (a stage left running would hold DVC's lock and block the next retrain).
    """
    cmd = [dvc_executable(), "exp", "run"] if experiment else [dvc_executable(), "repro"]
    for key, value in (set_params or {}).items():
        if not experiment:
            raise ValueError("parameter overrides need experiment=True (dvc exp run -S)")
        cmd += ["-S", f"{key}={value}"]
    cmd += list(targets)
    log.info("running %s in %s", " ".join(cmd[1:]), root)
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=root,
        env=_tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_process_group(proc)
        raise PipelineError(f"dvc repro did not finish within {timeout_s:g} s (stopped)") from None
    seconds = time.monotonic() - start
    for line in (out or "").splitlines():
        log.debug("dvc | %s", line)
    tail = "\n".join((out or "").strip().splitlines()[-TAIL_LINES:])
    return ReproResult(returncode=proc.returncode, seconds=seconds, tail=tail)


def read_gates(paths: ProjectPaths) -> dict[str, Any] | None:
    """metrics/gates.json, or None when the gate stage has not written it."""
    path = paths.metrics / "gates.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def retrain_lock(paths: ProjectPaths, timeout_s: float) -> FileLock:
    """The lock that keeps two retrains of one project from running at once.

    DVC refuses a second ``dvc repro`` while one runs (it fails at once on its own lock), so a
    weekly retrain and a drift-triggered one that meet would fail; with this lock the second waits.
    """
    paths.registry.mkdir(parents=True, exist_ok=True)
    return FileLock(paths.registry / ".retrain.lock", timeout=timeout_s)


def _last_line(tail: str, default: str) -> str:
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    return lines[-1] if lines else default


def retrain(
    paths: ProjectPaths,
    params: Params,
    *,
    reason: str,
    actor: str | None = None,
    batch_id: str | None = None,
    repro: Callable[[Path], ReproResult] | None = None,
    registry: Any | None = None,
) -> RetrainOutcome:
    """Run the pipeline to the gate, then register + promote (or register as rejected).

    Never raises for a refused model: a refusal is a normal outcome, recorded in the audit log.
    Every start and every end (promoted, refused, unchanged or failed) is one audit line.
    ``batch_id`` names the monitored batch whose drift asked for this retrain (None: scheduled/manual).
    """
    from plantwatch.registry import Registry

    cfg = params.orchestrate
    reg = registry or Registry(paths.root, params.registry)
    run = repro or (lambda root: run_repro(root, targets=[PROMOTE_STAGE], timeout_s=cfg.pipeline_timeout_s))
    before = reg.production_tag()
    reg.audit("retrain_started", actor=actor, reason=reason, from_tag=before, batch_id=batch_id)
    start = time.monotonic()
    lock = retrain_lock(paths, cfg.retrain_lock_timeout_s)
    try:
        try:
            lock.acquire()
        except Timeout:
            raise PipelineError(
                f"another retrain of this project held {lock.lock_file} for more than "
                f"{cfg.retrain_lock_timeout_s:g} s"
            ) from None
        try:
            outcome = _repro_and_promote(paths, params, reg, run, reason=reason, actor=actor, before=before)
        finally:
            lock.release()
    except Exception as err:
        # Whatever broke (DVC, a stage, the registry, a timeout), the trail says the retrain ended.
        reg.audit("retrain_finished", actor=actor, reason=reason, from_tag=before, batch_id=batch_id,
                  status="failed", refusals=[str(err) or type(err).__name__])
        if isinstance(err, PlantwatchError):
            raise
        raise PipelineError(f"retrain failed: {type(err).__name__}: {err}") from err
    outcome.batch_id = batch_id
    outcome.seconds = time.monotonic() - start
    reg.audit(
        "retrain_finished",
        actor=actor,
        reason=reason,
        from_tag=before,
        to_tag=outcome.after,
        batch_id=batch_id,
        status=outcome.status,
        refusals=outcome.refusals,
        gate_report="reports/gates.md",
    )
    log.info("retrain %s: %s -> %s (%.0f s)", outcome.status, before, outcome.after, outcome.seconds)
    return outcome


def _repro_and_promote(
    paths: ProjectPaths,
    params: Params,
    reg: Any,
    run: Callable[[Path], ReproResult],
    *,
    reason: str,
    actor: str | None,
    before: str | None,
) -> RetrainOutcome:
    """``dvc repro promote``; after a failed gate, register the refused version (promote did not run).

    Targeting the last stage (not the whole dvc.yaml) skips stages that are not upstream of it:
    the demo ``simulate`` stage, once ``data.sources`` points at real data.
    """
    from plantwatch.registry.promotion import promote_from_gate

    gate_file = paths.metrics / "gates.json"
    stamp_before = gate_file.stat().st_mtime_ns if gate_file.exists() else None
    # The whole pipeline: when the gates pass, DVC's own ``promote`` stage registers and promotes
    # (so dvc.lock stays true and a second repro reruns nothing).
    result = run(paths.root)
    gates = read_gates(paths)
    fresh = gate_file.exists() and gate_file.stat().st_mtime_ns != stamp_before
    gate_refused = result.returncode != 0 and gates is not None and fresh and gates.get("passed") is False
    if result.returncode != 0 and not gate_refused:
        raise PipelineError(f"training pipeline failed: {_last_line(result.tail, 'dvc repro failed')}")

    outcome = RetrainOutcome(
        status="promoted",
        reason=reason,
        before=before,
        after=reg.production_tag(),
        gates_passed=bool(gates and gates.get("passed")),
        chosen=(gates or {}).get("chosen"),
    )
    if gate_refused:
        # The promote stage did not run: record the refused version and why, pointer untouched.
        try:
            promote_from_gate(reg, paths, params, actor=actor, reason=f"retrain: {reason}")
        except GateFailed as err:
            outcome.refusals = [str(err)]
        outcome.status = "refused"
        outcome.after = reg.production_tag()
    elif outcome.after == before:
        outcome.status = "unchanged"
    return outcome


# --------------------------------------------------------------------------------------------------
# drift-triggered retraining: the event and the monitored window (pure helpers)
# --------------------------------------------------------------------------------------------------
def drift_resource_id(params: Params) -> str:
    """The Prefect resource a drift event concerns; the retrain trigger matches exactly this id."""
    return f"{RESOURCE_PREFIX}.{params.monitor.project}"


def drift_event_payload(
    batch_id: str,
    reason: str,
    *,
    drift_share: float | None,
    drifted_sensors: Sequence[str],
    decided_batch: int,
) -> dict[str, Any]:
    """What the drift event carries; the retrain deployment's trigger reads ``reason`` and ``batch_id``."""
    return {
        "batch_id": batch_id,
        "reason": retrain_reason(batch_id, reason),
        "drift_share": drift_share,
        "drifted_sensors": list(drifted_sensors),
        "decided_batch": decided_batch,
    }


def retrain_reason(batch_id: str, why: str) -> str:
    """The reason a drift-triggered retrain records (the same on the event path and the direct one)."""
    return f"drift on batch {batch_id}: {why}"


def window_day(folder: Path) -> date | None:
    """The scoring day of an inference-log partition folder, or None for any other folder."""
    if not folder.name.startswith(PARTITION_PREFIX):
        return None
    try:
        return date.fromisoformat(folder.name[len(PARTITION_PREFIX) :])
    except ValueError:
        return None


def newest_unmonitored_window(
    windows: Collection[Path], monitored: Callable[[Path], bool], today: date
) -> Path | None:
    """The newest complete day partition (before ``today``), unless it was monitored already.

    Today's partition is still being written (the service appends all day): monitoring it now would
    compare part of a daily cycle, and see it again with other content next hour. Days older than
    the newest one are not backfilled: the drift policy counts batches in time order.
    """
    complete = [(day, w) for w in windows if (day := window_day(w)) is not None and day < today]
    if not complete:
        return None
    _, newest = max(complete)
    return None if monitored(newest) else newest
