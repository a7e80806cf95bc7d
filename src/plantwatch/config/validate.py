"""``validate:`` block — thresholds of the raw-telemetry Great Expectations suite."""

from __future__ import annotations

from pydantic import Field, PositiveInt, model_validator

from plantwatch.config.base import StrictModel


class ValidateConfig(StrictModel):
    suite_name: str = Field(default="raw_telemetry", pattern=r"^[A-Za-z0-9_.-]+$")
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
    #: Stuck runs are reported as a warning and KEPT by default: a frozen sensor is also a fault the
    #: model has to learn to flag. ``true`` quarantines them like any other row-level defect.
    quarantine_stuck: bool = False
    #: Build the GX Data Docs site (reports/data_docs/) after each ``plantwatch validate``.
    data_docs: bool = True
    #: The Data Docs index lists at most this many of the newest validation runs.
    data_docs_max_runs: PositiveInt = 30

    @model_validator(mode="after")
    def _row_bounds(self) -> ValidateConfig:
        if self.min_rows > self.max_rows:
            raise ValueError(f"min_rows ({self.min_rows}) must not exceed max_rows ({self.max_rows})")
        return self
