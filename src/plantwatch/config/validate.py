"""``validate:`` block — thresholds of the raw-telemetry Great Expectations suite."""

from __future__ import annotations

from pydantic import Field, PositiveInt

from plantwatch.config.base import StrictModel


class ValidateConfig(StrictModel):
    suite_name: str = "raw_telemetry"
    #: A sampling gap larger than ``max_gap_factor`` × interval is a defect ...
    max_gap_factor: float = Field(default=3.0, gt=1.0)
    #: ... tolerated on up to (1 - gap_mostly) of rows.
    gap_mostly: float = Field(default=0.99, gt=0.0, le=1.0)
    #: Largest accepted share of nulls per sensor column in a batch.
    max_null_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    min_rows: PositiveInt = 50
    max_rows: PositiveInt = 50_000_000
    #: A sensor that repeats the exact same value this many consecutive readings is "stuck".
    stuck_run_length: PositiveInt = 30
