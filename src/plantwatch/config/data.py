"""The telemetry data contract (``data:`` block)."""

from __future__ import annotations

from pydantic import Field, PositiveInt, field_validator, model_validator

from plantwatch.config.base import StrictModel


class SensorSpec(StrictModel):
    """Physical limits of one sensor. ``None`` = unbounded on that side."""

    min: float | None = None
    max: float | None = None
    unit: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> SensorSpec:
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self


class DataConfig(StrictModel):
    """Where telemetry comes from and what it must look like.

    ``ingest`` renames ``timestamp_column``/``asset_column``/``label_column`` to the canonical names in
    ``plantwatch.schema``; when the data has no asset column, every row gets ``default_asset``.
    """

    sources: list[str] = Field(min_length=1, description="CSV/Parquet files (optionally .gz) or globs")
    landing_dir: str = "data/landing"
    interim_path: str = "data/interim/telemetry.parquet"
    timestamp_column: str = "timestamp"
    asset_column: str | None = "asset"
    default_asset: str = "asset-0"
    label_column: str | None = "label"
    passthrough_columns: list[str] = Field(default_factory=list)
    sensors: dict[str, SensorSpec] = Field(min_length=1)
    interval_s: PositiveInt = 60
    #: Rows before this index (per source file order) are the source's official training part.
    train_rows: PositiveInt | None = None
    #: How text timestamps are parsed (a pandas ``to_datetime`` format). ``ISO8601`` accepts offsets;
    #: aware values are converted to UTC, naive ones are taken as UTC. Unparseable values become NaT
    #: and are recorded as type errors, so validation quarantines them instead of losing them.
    timestamp_format: str = "ISO8601"

    @field_validator("sources")
    @classmethod
    def _no_blank_sources(cls, v: list[str]) -> list[str]:
        if any(not s.strip() for s in v):
            raise ValueError("source paths must not be blank")
        return v

    @model_validator(mode="after")
    def _distinct_columns(self) -> DataConfig:
        """A sensor named like the timestamp/asset/label column would be silently overwritten."""
        special = {c for c in (self.timestamp_column, self.asset_column, self.label_column) if c}
        clash = special & (set(self.sensors) | set(self.passthrough_columns))
        if clash:
            raise ValueError(f"column(s) {sorted(clash)} used both as a sensor/passthrough and a key column")
        return self

    @field_validator("sensors", mode="before")
    @classmethod
    def _names_only(cls, v: object) -> object:
        """Allow ``sensors: [a, b]`` (no limits) as shorthand for ``sensors: {a: {}, b: {}}``."""
        if isinstance(v, list):
            return {str(name): {} for name in v}
        return v

    @property
    def sensor_names(self) -> list[str]:
        return list(self.sensors)
