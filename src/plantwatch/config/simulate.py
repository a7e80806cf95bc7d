"""``simulate:`` block — defaults of the fleet simulator (the embedded demo data source)."""

from __future__ import annotations

from pydantic import Field, PositiveInt

from plantwatch.config.base import StrictModel


class SimulateConfig(StrictModel):
    seed: int = 42
    assets: PositiveInt = 6
    days: float = Field(default=14.0, gt=0)
    #: Target share of anomalous rows (the simulator places fault episodes to land in 1–3 %).
    anomaly_rate: float = Field(default=0.02, ge=0.0, le=0.2)
