"""``simulate:`` block — defaults of the fleet simulator (the embedded demo data source).

Only the top-level knobs (seed, fleet size, anomaly rate, drift, defects) usually appear in
params.yaml; the pump physics and fault shapes have documented defaults here so that the simulator
has no magic numbers buried in code, yet a user can still override any of them from params.yaml.
Ranges are ``[low, high]`` pairs from which the simulator draws uniformly, per asset or per episode.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from plantwatch.config.base import StrictModel

FaultKind = Literal["bearing_wear", "overheating", "cavitation", "stuck_sensor", "spikes"]
#: Every fault kind the simulator can produce, in a fixed order (used for codes and defaults).
FAULT_KINDS: tuple[FaultKind, ...] = ("bearing_wear", "overheating", "cavitation", "stuck_sensor", "spikes")


def _ordered_range(v: tuple[float, float]) -> tuple[float, float]:
    if v[0] > v[1]:
        raise ValueError(f"range low ({v[0]}) must not exceed high ({v[1]})")
    return v


#: ``[low, high]`` with low <= high; the simulator draws uniformly from it.
Range = Annotated[tuple[float, float], AfterValidator(_ordered_range)]


class LoadConfig(StrictModel):
    """Daily operating load (0..1 of rated speed): a shift pattern, smoothed, plus slow noise."""

    #: Hours of day at which each shift starts (ascending); the last shift wraps past midnight.
    shift_start_h: list[float] = Field(default_factory=lambda: [6.0, 14.0, 22.0], min_length=1)
    #: Load level of each shift, same order as ``shift_start_h`` (morning, afternoon, night).
    shift_levels: list[float] = Field(default_factory=lambda: [0.9, 0.75, 0.45], min_length=1)
    #: Saturday and Sunday run at this fraction of the weekday level.
    weekend_factor: float = Field(default=0.8, gt=0.0, le=1.0)
    #: Shift changes ramp with this time constant (first-order lag) rather than as steps.
    ramp_min: PositiveFloat = 20.0
    #: Slow random load fluctuation (Ornstein-Uhlenbeck): standard deviation and time constant.
    noise_sd: float = Field(default=0.04, ge=0.0)
    noise_tau_min: PositiveFloat = 30.0
    #: Each asset's load level is scaled by 1 + N(0, asset_level_sd) (assets serve different lines).
    asset_level_sd: float = Field(default=0.04, ge=0.0)
    #: Each asset's shift changes are shifted in time by N(0, asset_phase_sd_min) minutes.
    asset_phase_sd_min: float = Field(default=15.0, ge=0.0)
    #: Load never leaves [min, max] (a VFD has a minimum speed).
    min: float = Field(default=0.3, gt=0.0)
    max: float = Field(default=1.0, gt=0.0, le=1.2)

    @model_validator(mode="after")
    def _consistent(self) -> LoadConfig:
        if len(self.shift_start_h) != len(self.shift_levels):
            raise ValueError("shift_start_h and shift_levels need one entry per shift")
        hours = self.shift_start_h
        if sorted(hours) != hours or not all(0 <= h < 24 for h in hours):
            raise ValueError("shift_start_h must be ascending hours in [0, 24)")
        if any(level <= 0 for level in self.shift_levels):
            raise ValueError("shift levels must be positive")
        if self.min >= self.max:
            raise ValueError(f"load min ({self.min}) must be below max ({self.max})")
        return self


class PumpConfig(StrictModel):
    """Nominal physics of a VFD-driven centrifugal pump; each asset deviates by ``asset_spread``.

    speed = load; rpm = rpm_rated * speed; flow = flow_rated * speed (affinity laws);
    pressure = pressure_static + pressure_gain * speed^2; current = current_idle + current_gain * speed^3;
    temperature = ambient + temp_rise * lag(speed^3, temp_tau_min); vibration = vib_base + vib_gain * speed^2.
    """

    rpm_rated: PositiveFloat = 2950.0
    flow_rated: PositiveFloat = 250.0
    pressure_static: float = Field(default=1.5, ge=0.0)
    pressure_gain: PositiveFloat = 6.0
    current_idle: float = Field(default=30.0, ge=0.0)
    current_gain: PositiveFloat = 120.0
    temp_rise: PositiveFloat = 35.0
    #: Thermal time constant of the motor/bearing housing: temperature lags load by about this.
    temp_tau_min: PositiveFloat = 40.0
    vib_base: PositiveFloat = 1.0
    vib_gain: PositiveFloat = 2.2
    #: Relative standard deviation of every rated value across assets (no two pumps are alike).
    asset_spread: float = Field(default=0.05, ge=0.0, lt=0.3)
    #: Ambient temperature: mean, per-asset offset sd, daily amplitude and hour of the daily peak.
    ambient_c: float = 22.0
    ambient_asset_sd_c: float = Field(default=1.5, ge=0.0)
    ambient_amplitude_c: float = Field(default=4.0, ge=0.0)
    ambient_peak_h: float = Field(default=15.0, ge=0.0, lt=24.0)


def _default_noise() -> dict[str, float]:
    return {
        "temperature": 0.3,
        "vibration": 0.08,
        "pressure": 0.05,
        "flow": 1.5,
        "current": 1.0,
        "rpm": 8.0,
    }


class BearingWearConfig(StrictModel):
    """Vibration grows as ``1 + gain * r^power`` over the episode (r: 0 -> 1), temperature creeps up."""

    minutes: Range = (180.0, 480.0)
    vibration_gain: Range = (0.5, 1.2)
    power: PositiveFloat = 1.5
    temperature_creep_c: Range = (2.0, 5.0)


class OverheatingConfig(StrictModel):
    """Extra heat (cooling failure): temperature rises by ``excess_c`` beyond what load explains,
    with time constant ``tau_min``, then cools back over the last ``cool_share`` of the episode."""

    minutes: Range = (60.0, 150.0)
    excess_c: Range = (12.0, 25.0)
    tau_min: PositiveFloat = 15.0
    cool_share: float = Field(default=0.3, gt=0.0, lt=1.0)


class CavitationConfig(StrictModel):
    """Pressure drops, vibration gets bursty noise, flow wobbles, current dips slightly."""

    minutes: Range = (20.0, 60.0)
    pressure_drop: Range = (0.12, 0.25)
    #: Vibration is multiplied by 1 + vibration_noise * |N(0, 1)| reading by reading.
    vibration_noise: Range = (0.2, 0.5)
    #: Flow wobbles as flow_wobble * sin(2 pi t / period) plus half as much white noise.
    flow_wobble: Range = (0.03, 0.07)
    wobble_period_min: Range = (3.0, 8.0)
    current_drop: float = Field(default=0.03, ge=0.0, lt=1.0)


class StuckSensorConfig(StrictModel):
    """One sensor repeats its last reading exactly for the whole episode."""

    minutes: Range = (45.0, 180.0)


class SpikesConfig(StrictModel):
    """Isolated single-reading spikes on one sensor within a window; only spike rows are labelled."""

    window_minutes: Range = (60.0, 240.0)
    count: Range = (4.0, 8.0)
    #: Spike height in units of that sensor's standard deviation on that asset.
    magnitude_sd: Range = (3.0, 8.0)
    #: Share of spikes that go up (the rest go down); a spike never crosses a physical limit.
    upward_share: float = Field(default=0.8, ge=0.0, le=1.0)


class FaultsConfig(StrictModel):
    """Which fault kinds occur and what each looks like."""

    kinds: list[FaultKind] = Field(default_factory=lambda: list(FAULT_KINDS))
    #: Minimum fault-free time between two episodes on one asset, and before the first one.
    gap_minutes: PositiveFloat = 120.0
    bearing_wear: BearingWearConfig = BearingWearConfig()
    overheating: OverheatingConfig = OverheatingConfig()
    cavitation: CavitationConfig = CavitationConfig()
    stuck_sensor: StuckSensorConfig = StuckSensorConfig()
    spikes: SpikesConfig = SpikesConfig()


class DriftConfig(StrictModel):
    """``scenario=drift``: a new operating regime plus a pressure-transmitter recalibration, no faults."""

    #: Added to the load level (e.g. a new product needs higher throughput).
    load_offset: float = 0.2
    #: Daily swing around the mean shift level is multiplied by this (near-continuous operation).
    load_swing: float = Field(default=0.4, ge=0.0)
    #: Season change: ambient temperature offset.
    ambient_offset_c: float = 6.0
    #: Recalibrated pressure transmitter: measured = gain * true + offset.
    pressure_gain: PositiveFloat = 1.1
    pressure_offset: float = 0.8


class DefectsConfig(StrictModel):
    """Data-quality defects of ``inject_defects`` as shares of rows (kept small: the batch must pass)."""

    missing: float = Field(default=0.005, ge=0.0, le=0.05)
    duplicate: float = Field(default=0.003, ge=0.0, le=0.05)
    out_of_order: float = Field(default=0.003, ge=0.0, le=0.05)
    out_of_range: float = Field(default=0.003, ge=0.0, le=0.05)
    #: An out-of-range reading lies beyond its limit by this share of the sensor's limit span.
    out_of_range_margin: Range = (0.05, 0.5)


class SimulateConfig(StrictModel):
    seed: NonNegativeInt = 42
    assets: PositiveInt = 6
    days: float = Field(default=14.0, gt=0)
    #: Target share of anomalous rows (the simulator places fault episodes to land in 1–3 %).
    anomaly_rate: float = Field(default=0.02, ge=0.0, le=0.2)
    #: First timestamp (naive UTC; an aware value is converted to UTC).
    start: datetime = datetime(2024, 1, 1)
    #: Asset names are ``<asset_prefix>-01``, ``<asset_prefix>-02`` ...
    asset_prefix: str = Field(default="pump", min_length=1)
    load: LoadConfig = LoadConfig()
    pump: PumpConfig = PumpConfig()
    #: Measurement noise (standard deviation, sensor units) per simulated sensor.
    noise_sd: dict[str, float] = Field(default_factory=_default_noise)
    faults: FaultsConfig = FaultsConfig()
    drift: DriftConfig = DriftConfig()
    defects: DefectsConfig = DefectsConfig()

    @field_validator("noise_sd")
    @classmethod
    def _noise_complete(cls, v: dict[str, float]) -> dict[str, float]:
        """A partial override (e.g. only ``rpm``) keeps the defaults of the other sensors."""
        bad = [k for k, sd in v.items() if sd < 0]
        if bad:
            raise ValueError(f"noise sd must be >= 0 (got negative for {', '.join(bad)})")
        return _default_noise() | v
