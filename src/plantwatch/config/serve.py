"""``serve:`` block — the HTTP scoring service."""

from __future__ import annotations

from pydantic import Field, PositiveInt

from plantwatch.config.base import StrictModel


class ServeConfig(StrictModel):
    host: str = "127.0.0.1"
    port: PositiveInt = 3000
    max_readings: PositiveInt = 10_000
    max_body_bytes: PositiveInt = 8 * 1024 * 1024
    #: Name of the environment variable holding the token for state-changing endpoints.
    token_env: str = "PLANTWATCH_API_TOKEN"
    reload_poll_s: float = Field(default=1.0, gt=0.0)
