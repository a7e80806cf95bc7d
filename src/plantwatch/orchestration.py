"""Run the training pipeline (DVC) and promotion as one retrain, for the CLI, flows and monitoring.

Why DVC in a subprocess: ``dvc repro`` is the one source of truth of what must rerun (it skips
stages whose deps and params did not change) and the same command a person types. Promotion is the
registry's own function, so a retrain whose gates fail still registers the refused version with its
reasons (the ``promote`` DVC stage never runs after a failed gate).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plantwatch.config import Params
from plantwatch.errors import GateFailed, PlantwatchError
from plantwatch.paths import ProjectPaths

log = logging.getLogger(__name__)

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


def run_repro(
    root: Path,
    *,
    targets: Sequence[str] = (),
    experiment: bool = False,
    set_params: dict[str, Any] | None = None,
    timeout_s: float | None = None,
) -> ReproResult:
    """``dvc repro`` (or ``dvc exp run -S k=v`` for an experiment) in ``root``; streams DVC's log."""
    cmd = [dvc_executable(), "exp", "run"] if experiment else [dvc_executable(), "repro"]
    for key, value in (set_params or {}).items():
        if not experiment:
            raise ValueError("parameter overrides need experiment=True (dvc exp run -S)")
        cmd += ["-S", f"{key}={value}"]
    cmd += list(targets)
    log.info("running %s in %s", " ".join(cmd[1:]), root)
    start = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=root, env=_tool_env(), capture_output=True, text=True, timeout=timeout_s, check=False
    )
    seconds = time.monotonic() - start
    out = (proc.stdout or "") + (proc.stderr or "")
    for line in out.splitlines():
        log.debug("dvc | %s", line)
    tail = "\n".join(out.strip().splitlines()[-12:])
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


def retrain(
    paths: ProjectPaths,
    params: Params,
    *,
    reason: str,
    actor: str | None = None,
    repro: Callable[..., ReproResult] = run_repro,
    registry: Any | None = None,
) -> RetrainOutcome:
    """Run the pipeline to the gate, then register + promote (or register as rejected).

    Never raises for a refused model: a refusal is a normal outcome, recorded in the audit log.
    """
    from plantwatch.registry import Registry
    from plantwatch.registry.promotion import promote_from_gate

    reg = registry or Registry(paths.root, params.registry)
    before = reg.production_tag()
    reg.audit("retrain_started", actor=actor, reason=reason, from_tag=before)
    start = time.monotonic()
    gate_file = paths.metrics / "gates.json"
    stamp_before = gate_file.stat().st_mtime_ns if gate_file.exists() else None

    # The whole pipeline: when the gates pass, DVC's own ``promote`` stage registers and promotes
    # (so dvc.lock stays true and a second repro reruns nothing).
    result = repro(paths.root)
    gates = read_gates(paths)
    fresh = gate_file.exists() and gate_file.stat().st_mtime_ns != stamp_before
    gate_refused = result.returncode != 0 and gates is not None and fresh and gates.get("passed") is False
    if result.returncode != 0 and not gate_refused:
        last = result.tail.splitlines()[-1] if result.tail else "dvc repro failed"
        reg.audit("retrain_finished", actor=actor, reason=reason, from_tag=before, status="failed",
                  refusals=[last])
        raise PipelineError(f"training pipeline failed: {last}")

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
    outcome.seconds = time.monotonic() - start
    reg.audit(
        "retrain_finished",
        actor=actor,
        reason=reason,
        from_tag=before,
        to_tag=outcome.after,
        status=outcome.status,
        refusals=outcome.refusals,
        gate_report="reports/gates.md",
    )
    log.info("retrain %s: %s -> %s (%.0f s)", outcome.status, before, outcome.after, outcome.seconds)
    return outcome
