"""Small helpers shared by test modules (importable, unlike a conftest: ``from tests.helpers import ...``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: Characters of each log file shown when a wait times out (the end is where the error is).
LOG_TAIL_CHARS = 3000


def log_tails(logs: Iterable[Path], chars: int = LOG_TAIL_CHARS) -> str:
    """The last ``chars`` characters of every existing log file, each under a ``--- name`` header."""
    return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-chars:] for p in logs if p.exists())


def wait_for(
    cond: Callable[..., Any],
    timeout: float,
    what: str,
    interval: float = 0.1,
    logs: Iterable[Path] = (),
) -> Any:
    """Poll ``cond`` until it returns something truthy and return that value; bounded by ``timeout``.

    Servers and background threads in tests become ready at unknown times: a bounded poll keeps a
    hang from stalling the suite, and on timeout the tails of ``logs`` (server / worker logs) go
    into the failure message, because the reason is usually only there.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    tails = log_tails(logs)
    message = f"timed out after {timeout:g} s waiting for {what}"
    raise AssertionError(f"{message}\n{tails}" if tails else message)
