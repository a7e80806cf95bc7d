"""Append-only audit trail of registry decisions: who changed what the plant runs, when and why.

One JSON object per line in ``registry/audit.jsonl``. Appends are single ``O_APPEND`` writes, so
the CLI, the flows and the service can write concurrently without a lock; a line torn by a crash is
skipped on read (and reported), never fatal.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from plantwatch.errors import UsageError
from plantwatch.registry.atomic import append_line, json_safe

log = logging.getLogger(__name__)

ACTOR_ENV = "PLANTWATCH_ACTOR"
_EVENT_RE = re.compile(r"^[a-z][a-z0-9_]*$")
#: Fields every line carries (None when not applicable), so readers never need ``get`` chains.
BASE_FIELDS: tuple[str, ...] = ("at", "event", "actor", "from", "to", "reason", "gate_report", "data_hash")


def utc_now() -> str:
    """ISO-8601 UTC timestamp with microseconds (sorts as text)."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _prefect_flow_run_name() -> str | None:
    """Name of the Prefect flow run we are inside, without importing Prefect when it isn't loaded."""
    if "prefect.context" not in sys.modules:
        return None
    try:
        ctx = sys.modules["prefect.context"].FlowRunContext.get()
    except Exception:  # pragma: no cover - prefect internals vary; the OS user is a fine fallback
        return None
    run = getattr(ctx, "flow_run", None) if ctx is not None else None
    name = getattr(run, "name", None)
    return f"prefect:{name}" if name else None


def current_actor(explicit: str | None = None) -> str:
    """Who acts: the explicit value, else ``$PLANTWATCH_ACTOR``, else the flow run, else the OS user."""
    if explicit:
        return explicit
    env = os.environ.get(ACTOR_ENV, "").strip()
    if env:
        return env
    flow = _prefect_flow_run_name()
    if flow:
        return flow
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return f"uid:{os.getuid()}"


@dataclass(frozen=True)
class AuditLog:
    path: Path

    def append(self, event: str, *, actor: str | None = None, **fields: Any) -> dict[str, Any]:
        """Write one event line and return it. Unknown ``fields`` are kept as extra keys."""
        if not _EVENT_RE.match(event):
            raise UsageError(f"audit event {event!r}: use lowercase letters, digits and underscores")
        fields = {k.rstrip("_"): v for k, v in fields.items()}  # from_=... -> "from"
        entry: dict[str, Any] = dict.fromkeys(BASE_FIELDS)
        entry.update(json_safe(fields))
        entry["at"] = utc_now()
        entry["event"] = event
        entry["actor"] = current_actor(actor)
        append_line(self.path, json.dumps(entry, sort_keys=False, allow_nan=False))
        log.debug("audit %s", entry)
        return entry

    def read(self) -> list[dict[str, Any]]:
        """All readable events, oldest first; torn or foreign lines are skipped with a warning."""
        if not self.path.exists():
            return []
        events, bad = [], 0
        with self.path.open("rb") as fh:
            for raw in fh:
                try:
                    entry = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    bad += 1
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("event"), str):
                    events.append(entry)
                else:
                    bad += 1
        if bad:
            log.warning("%s: skipped %d unreadable line(s)", self.path, bad)
        return events
