"""Fault injection for the crash-consistency tests: die or stall at named points of a write.

Why it lives in production code: the guarantee "a ``kill -9`` at any moment leaves the production
pointer valid" can only be tested by killing the real code at the real moments. The hooks cost one
dictionary lookup when the variables are unset (always, outside tests).

``PLANTWATCH_CRASH_AT=<point>[,<point>...]`` SIGKILLs the process on reaching a named point.
``PLANTWATCH_DELAY_AT=<point>=<seconds>[,...]`` sleeps there (widens race windows in tests).
"""

from __future__ import annotations

import logging
import os
import signal
import time

log = logging.getLogger(__name__)

CRASH_ENV = "PLANTWATCH_CRASH_AT"
DELAY_ENV = "PLANTWATCH_DELAY_AT"

#: Every named point, in the order a registration + promotion reaches them (the tests iterate it).
POINTS: tuple[str, ...] = (
    "register.after_artifact_write",  # skops + cards written into BentoML's temp model folder
    "register.after_store_save",  # model folder in the store, no plantwatch record yet
    "register.after_record_write",  # record (hashes) written, no audit line yet
    "promote.before_pointer_write",  # candidate fully registered, pointer untouched
    "pointer.after_read",  # pointer read under the lock, new state not written yet
    "pointer.after_temp_write",  # new pointer in a fsynced temp file, not renamed yet
    "pointer.after_replace",  # pointer renamed into place, backup not refreshed yet
    "promote.after_pointer_write",  # pointer + backup written, no audit line yet
)


def _named(env: str) -> dict[str, str]:
    raw = os.environ.get(env, "")
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, value = item.partition("=")
        out[name] = value
    return out


def checkpoint(point: str) -> None:
    """Crash or stall here if the environment asks for it (a no-op otherwise)."""
    if CRASH_ENV not in os.environ and DELAY_ENV not in os.environ:
        return
    if point in _named(DELAY_ENV):
        time.sleep(float(_named(DELAY_ENV)[point]))
    if point in _named(CRASH_ENV):
        log.warning("fault injection: SIGKILL at %s", point)
        os.kill(os.getpid(), signal.SIGKILL)
