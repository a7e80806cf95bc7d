"""The promote stage: gate outputs in, a registered version (and a new production pointer) out.

``gate_verdict`` is the pure core (does this gate result allow promotion, and if not, why);
``read_evidence`` and ``promote_from_gate`` are the thin I/O shell shared by the CLI and the flows.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plantwatch.config import Params
from plantwatch.errors import GateFailed, RegistryError
from plantwatch.paths import ProjectPaths
from plantwatch.registry.api import Evidence, Registry, VersionInfo
from plantwatch.registry.integrity import sha256_file
from plantwatch.registry.pointer import PointerState

log = logging.getLogger(__name__)

_KIND_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def _fmt_gate(gate: Mapping[str, Any]) -> str:
    return f"{gate.get('name', '?')} = {gate.get('value')} (threshold {gate.get('threshold')})"


def gate_verdict(gates: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """``(promotable, reasons)``: promotable only if the file says passed AND every gate passed.

    Fail-safe: a file claiming ``passed`` while listing a failed gate is treated as failed; a failed
    file without failed gates gives its notes (or a generic line) as the reasons.
    """
    listed = [g for g in gates.get("gates", []) or [] if isinstance(g, Mapping)]
    failed = [g for g in listed if g.get("passed") is not True]
    if gates.get("passed") is True and not failed:
        return True, []
    reasons = [f"gate {_fmt_gate(g)} failed" for g in failed]
    if not reasons:
        reasons = [str(n) for n in gates.get("notes", []) or []] or ["metrics/gates.json says passed=false"]
    return False, reasons


def _read_json(path: Path, root: Path) -> dict[str, Any]:
    rel = path.relative_to(root) if path.is_relative_to(root) else path
    if not path.is_file():
        raise RegistryError(
            f"{rel} not found: run the train, evaluate and gate stages first (dvc repro gate)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RegistryError(f"{rel}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{rel}: expected a JSON object")
    return data


def _train_info_for(train_info: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """Top-level training facts, overlaid with the chosen candidate's own entry when there is one."""
    merged = {k: v for k, v in train_info.items() if k != "candidates"}
    per = train_info.get("candidates")
    if isinstance(per, Mapping) and isinstance(per.get(kind), Mapping):
        merged.update(per[kind])
    return merged


def read_evidence(paths: ProjectPaths, params: Params) -> tuple[Path, Evidence]:
    """The chosen candidate's artifact and everything the gate stage wrote about it."""
    gates = _read_json(paths.metrics / "gates.json", paths.root)
    kind = gates.get("chosen")
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise RegistryError(f"metrics/gates.json: 'chosen' must name a candidate, got {kind!r}")
    artifact = paths.models / f"{kind}.skops"
    if not artifact.is_file():
        raise RegistryError(
            f"models/{kind}.skops not found: the gate chose {kind!r} but the train stage did not save it"
        )
    report = paths.reports / "gates.md"
    evidence = Evidence(
        kind=kind,
        train_info=_train_info_for(_read_json(paths.models / "train_info.json", paths.root), kind),
        holdout=_read_json(paths.metrics / "holdout.json", paths.root),
        cv=_read_json(paths.metrics / "cv.json", paths.root),
        gates=gates,
        alert_budget=params.train.alert_budget,
        data_sources=tuple(params.data.sources),
        gate_report=str(report.relative_to(paths.root)) if report.is_file() else None,
        gate_report_sha256=sha256_file(report) if report.is_file() else None,
    )
    return artifact, evidence


@dataclass(frozen=True)
class PromoteOutcome:
    version: VersionInfo
    pointer: PointerState


def promote_from_gate(
    registry: Registry,
    paths: ProjectPaths,
    params: Params,
    *,
    actor: str | None = None,
    reason: str | None = None,
) -> PromoteOutcome:
    """Register the gate's chosen candidate; promote it if the gates passed.

    Gates failed -> the version is registered as ``rejected`` (kept for the record, never
    promotable) and ``GateFailed`` is raised (exit 1), the pointer untouched.
    """
    artifact, evidence = read_evidence(paths, params)
    passed, reasons = gate_verdict(evidence.gates)
    info = registry.register(artifact, evidence, rejected_reasons=reasons, actor=actor)
    if not passed:
        raise GateFailed(f"{info.tag} registered as rejected: {'; '.join(reasons)}")
    notes = [str(n) for n in evidence.gates.get("notes", []) or []]
    why = reason or f"gates passed, {evidence.kind} chosen" + (f": {notes[0]}" if notes else "")
    pointer = registry.promote(info.tag, actor=actor, reason=why)
    return PromoteOutcome(version=registry.version(info.tag), pointer=pointer)
