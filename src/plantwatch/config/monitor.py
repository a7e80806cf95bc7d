"""``monitor:`` block — drift decision policy and retraining triggers."""

from __future__ import annotations

from pydantic import Field, PositiveInt

from plantwatch.config.base import StrictModel


class MonitorConfig(StrictModel):
    min_batch_rows: PositiveInt = 500
    #: Share of drifted sensors that makes a batch "drifted".
    drift_share: float = Field(default=0.3, gt=0.0, le=1.0)
    #: Act only when k of the last m batches drifted.
    k: PositiveInt = 2
    m: PositiveInt = 3
    cooldown_batches: PositiveInt = 10
