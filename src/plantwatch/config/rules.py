"""``rules:`` block — deterministic rules that travel with every model bundle.

Physical limits are not repeated here: they come from ``data.sensors`` (one source of truth for
what a sensor can physically read). This block only says which rules are on and what operators
want silenced (maintenance windows, suppressed assets or sensors).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, model_validator

from plantwatch.config.base import StrictModel


class MaintenanceWindow(StrictModel):
    """An asset under planned maintenance in ``[start, end)`` (UTC): its readings never alert."""

    asset: str
    start: datetime
    end: datetime

    @model_validator(mode="after")
    def _ordered(self) -> MaintenanceWindow:
        if self.start >= self.end:
            raise ValueError(f"start ({self.start}) must be before end ({self.end})")
        return self


class RulesConfig(StrictModel):
    #: A reading outside its sensor's physical limits (``data.sensors``) alerts at once.
    physical_limits: bool = True
    #: A missing (null) sensor reading is sent to review at least.
    missing_sensor: bool = True
    maintenance: list[MaintenanceWindow] = Field(default_factory=list)
    #: Assets whose readings are never alerted on (e.g. decommissioned, known faulty).
    suppress_assets: list[str] = Field(default_factory=list)
    #: Sensors whose rules are silenced and whose model alerts are dropped when they are the main cause.
    suppress_sensors: list[str] = Field(default_factory=list)
