"""The production pointer: which version the plant runs, plus the history of every change.

``registry/production.json`` is plantwatch's, not BentoML's (BentoML has no stages; its ``latest``
is merely the newest by creation time and is never used). It is replaced atomically under the
registry lock; after each successful write a copy goes to ``production.json.bak``. A reader that
finds the file unreadable (disk trouble, a hand edit) falls back to the backup, then to replaying
the promote/rollback events of the audit log, so a damaged pointer never crash-loops the service.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plantwatch.errors import RegistryError
from plantwatch.registry.atomic import atomic_write_json

log = logging.getLogger(__name__)

POINTER_SCHEMA_VERSION = 1
#: History actions; each entry makes its ``tag`` the production version.
POINTER_ACTIONS: frozenset[str] = frozenset({"promote", "rollback"})


@dataclass(frozen=True)
class PointerState:
    """Current production tag (None before the first promotion) and its full change history."""

    current: str | None = None
    history: tuple[dict[str, Any], ...] = ()
    #: Where this state was read from: file | backup | audit | empty (not persisted).
    source: str = field(default="empty", compare=False)

    def to_json(self, model_name: str, updated_at: str) -> dict[str, Any]:
        return {
            "schema_version": POINTER_SCHEMA_VERSION,
            "model_name": model_name,
            "current": self.current,
            "updated_at": updated_at,
            "history": list(self.history),
        }

    def with_entry(self, entry: dict[str, Any]) -> PointerState:
        return PointerState(current=entry["tag"], history=(*self.history, entry), source=self.source)

    def production_tags(self) -> list[str]:
        """Every tag that has been production, oldest first, without repeats."""
        return list(dict.fromkeys(e["tag"] for e in self.history))


def _valid_entry(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("tag"), str)
        and entry.get("action") in POINTER_ACTIONS
        and isinstance(entry.get("at"), str)
    )


def parse_pointer(raw: Any, source: str) -> PointerState:
    """Validate a decoded pointer document; ``ValueError`` says what is wrong."""
    if not isinstance(raw, dict) or raw.get("schema_version") != POINTER_SCHEMA_VERSION:
        raise ValueError("not a plantwatch production pointer")
    history = raw.get("history")
    if not isinstance(history, list) or not all(_valid_entry(e) for e in history):
        raise ValueError("malformed history")
    current = raw.get("current")
    expected = history[-1]["tag"] if history else None
    if current != expected:
        raise ValueError(f"current {current!r} disagrees with the last history entry {expected!r}")
    return PointerState(current=current, history=tuple(history), source=source)


def _read_file(path: Path, source: str) -> PointerState:
    """Parse one pointer file; ``ValueError``/``OSError`` when missing or damaged."""
    return parse_pointer(json.loads(path.read_bytes()), source)


def replay_audit(events: Iterable[Mapping[str, Any]]) -> PointerState:
    """Rebuild the pointer from the promote/rollback events of the audit log."""
    state = PointerState(source="audit")
    for event in events:
        if event.get("event") in POINTER_ACTIONS and isinstance(event.get("to"), str):
            entry = {
                "tag": event["to"],
                "from": event.get("from"),
                "at": str(event.get("at")),
                "actor": event.get("actor"),
                "reason": event.get("reason"),
                "action": event["event"],
            }
            state = state.with_entry(entry)
    return state


def read_pointer(main: Path, backup: Path, audit_events: Any) -> PointerState:
    """The pointer, recovering from the backup or the audit log if the main file is damaged.

    ``audit_events`` is a zero-argument callable returning the audit log's events (read lazily:
    only needed when both files are unusable). ``RegistryError`` when nothing can rebuild it.
    """
    problems: list[str] = []
    for path, source in ((main, "file"), (backup, "backup")):
        if not path.exists():
            continue
        try:
            state = _read_file(path, source)
        except (OSError, ValueError, UnicodeDecodeError) as err:
            problems.append(f"{path.name}: {err}")
            continue
        if problems:
            log.warning("production pointer damaged (%s); using %s", "; ".join(problems), path.name)
        return state
    replayed = replay_audit(audit_events())
    if replayed.history:
        log.warning(
            "production pointer unusable (%s); rebuilt from the audit log", "; ".join(problems) or "missing"
        )
        return replayed
    if problems:
        raise RegistryError(
            f"production pointer {main} is corrupt and cannot be recovered ({'; '.join(problems)}; "
            "no promotions in the audit log): restore it from a backup or delete it to start over"
        )
    return PointerState(source="empty")


def write_pointer(main: Path, backup: Path, state: PointerState, model_name: str, updated_at: str) -> None:
    """Atomically replace the pointer, then refresh its backup (call under the registry lock)."""
    doc = state.to_json(model_name, updated_at)
    atomic_write_json(main, doc, point="pointer")
    atomic_write_json(backup, doc)
