"""Crash-safe file writes: all-or-nothing replacement and append-only lines.

A reader (the scoring service polls the production pointer) must never see a half-written file,
and a ``kill -9`` or power cut must leave either the old or the new content. Hence: write a temp
file in the same folder, fsync it, ``os.replace`` it over the target (atomic on POSIX), then fsync
the folder so that the rename itself is durable.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from plantwatch.registry.faults import checkpoint

TMP_SUFFIX = ".tmp"


def fsync_dir(folder: Path) -> None:
    """Make a rename/creation inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, point: str | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    ``point`` names this write for fault injection (``<point>.after_temp_write`` /
    ``<point>.after_replace``); the crash tests kill the process exactly there.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    if point:
        checkpoint(f"{point}.after_temp_write")
    os.replace(tmp, path)
    if point:
        checkpoint(f"{point}.after_replace")
    fsync_dir(path.parent)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete temp files a killed writer left behind (call only while holding the writers' lock)."""
    removed = []
    if folder.is_dir():
        for tmp in folder.glob(f".*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def json_safe(obj: Any) -> Any:
    """JSON-able copy: NaN/inf become None, tuples lists, unknown objects their ``str``."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if hasattr(obj, "item"):  # numpy scalar
        return json_safe(obj.item())
    return str(obj)


def dumps(obj: Any) -> str:
    """Canonical JSON text of ``obj`` (strict: no NaN), stable key order for diffs and hashes."""
    return json.dumps(json_safe(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def atomic_write_json(path: Path, obj: Any, *, point: str | None = None) -> None:
    atomic_write_bytes(path, dumps(obj).encode(), point=point)


def append_line(path: Path, line: str) -> None:
    """Append one line with a single ``write`` on an ``O_APPEND`` descriptor, then fsync.

    ``O_APPEND`` makes concurrent appenders (CLI, flows, service) land whole lines one after the
    other instead of overwriting each other at a stale offset.
    """
    if "\n" in line:
        raise ValueError("an appended line must not contain a newline")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # pragma: no cover - only on a full disk
            raise OSError(f"short append to {path}: {written} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)
