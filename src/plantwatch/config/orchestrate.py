"""``orchestrate:`` block — Prefect schedules and the drift event that triggers retraining."""

from __future__ import annotations

from pydantic import Field, PositiveInt

from plantwatch.config.base import StrictModel


class OrchestrateConfig(StrictModel):
    #: Weekly scheduled retrain (cron, server time zone UTC).
    train_cron: str = "0 3 * * 1"
    #: Hourly monitoring of the newest inference-log window.
    monitor_cron: str = "0 * * * *"
    #: Event the monitoring flow emits when the drift policy asks for a retrain.
    drift_event: str = "plantwatch.drift.detected"
    #: Retries of the pipeline task (a transient DVC lock, a busy disk).
    pipeline_retries: int = Field(default=1, ge=0)
    retry_delay_s: PositiveInt = 10
    #: Local Prefect server for ``make deploy``.
    server_host: str = "127.0.0.1"
    server_port: PositiveInt = 4200
