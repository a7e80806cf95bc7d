"""Offline-by-default switches for every library plantwatch uses.

Set before those libraries are imported: several read their switches at import time.
"""

from __future__ import annotations

import os

#: Environment switches that turn off usage telemetry. BentoML insists on the string ``true``.
TELEMETRY_SWITCHES: dict[str, str] = {
    "BENTOML_DO_NOT_TRACK": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "EVIDENTLY_DISABLE_TELEMETRY": "1",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
}


def disable_telemetry() -> None:
    """Force the do-not-track switches (a user's explicit opt-out is never overridden to opt-in)."""
    for key, value in TELEMETRY_SWITCHES.items():
        os.environ[key] = value
