"""``orchestrate:`` block — Prefect schedules and the drift event that triggers retraining."""

from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt

from plantwatch.config.base import StrictModel


class OrchestrateConfig(StrictModel):
    #: Weekly scheduled retrain (cron, server time zone UTC).
    train_cron: str = "0 3 * * 1"
    #: Hourly monitoring of the newest complete inference-log day.
    monitor_cron: str = "0 * * * *"
    #: Event the monitoring flow emits when the drift policy asks for a retrain.
    drift_event: str = "plantwatch.drift.detected"
    #: Retries of the pipeline task (a transient DVC lock, a busy disk).
    pipeline_retries: int = Field(default=1, ge=0)
    retry_delay_s: PositiveInt = 10
    #: A ``dvc repro`` still running after this long is stopped and the retrain fails.
    pipeline_timeout_s: PositiveFloat = 7200.0
    #: A retrain waits this long for another retrain of the same project to finish.
    retrain_lock_timeout_s: PositiveFloat = 3600.0
    #: The retrain deployment counts as served when its runner polled the server this recently
    #: (a runner polls every 10 s; the server marks a deployment not ready after 60 s).
    deployment_fresh_s: PositiveFloat = 90.0
    #: Local Prefect server for ``make deploy``.
    server_host: str = "127.0.0.1"
    server_port: PositiveInt = 4200
    #: ``make deploy`` waits this long for the server's health endpoint.
    server_start_timeout_s: PositiveFloat = 120.0
