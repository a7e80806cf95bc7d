"""``monitor:`` block — drift detection, the drift decision policy and the post-promotion guard.

Why these knobs exist (see README "Drift monitoring"): Evidently's default test (normed Wasserstein,
threshold 0.1) flags clean small batches most of the time and KS flags harmless shifts on big ones.
plantwatch therefore measures drift as an *effect size* (normed Wasserstein = distance in units of
the reference standard deviation) with per-sensor thresholds, refuses to decide on batches that are
too small or shorter than one daily cycle, and only acts on drift seen in k of the last m batches.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from plantwatch.config.base import StrictModel

#: Evidently stattest names usable on numerical sensor columns. Distances (wasserstein, psi,
#: jensenshannon, hellinger, kl_div, ed) drift when score >= threshold; p-value tests (ks, t_test,
#: mannw, anderson, cramer_von_mises) drift when p < threshold.
DriftMethod = Literal[
    "wasserstein",
    "psi",
    "jensenshannon",
    "hellinger",
    "kl_div",
    "ed",
    "ks",
    "t_test",
    "mannw",
    "anderson",
    "cramer_von_mises",
]


#: Conditions the reference can be matched on (see ``MonitorConfig.match_on``).
MatchKey = Literal["asset", "hour", "weekend"]
MATCH_KEYS: tuple[MatchKey, ...] = ("asset", "hour", "weekend")


class ColumnDriftConfig(StrictModel):
    """Method and threshold for one column's drift test (Evidently stattest name + its threshold)."""

    method: DriftMethod = "wasserstein"
    threshold: float = Field(default=0.3, gt=0.0)


class GuardConfig(StrictModel):
    """Label-free check of a freshly promoted model over its first batches.

    Rolls back when the live alert rate exceeds ``alert_rate_factor`` x ``train.alert_budget`` or a
    score quantile moves by more than ``max_quantile_shift`` reference spreads (the spread is the
    distance between the lowest and highest quantile recorded at promotion).
    """

    batches: PositiveInt = 5
    alert_rate_factor: float = Field(default=3.0, gt=1.0)
    quantiles: list[float] = Field(default_factory=lambda: [0.5, 0.9, 0.99], min_length=2)
    max_quantile_shift: float = Field(default=1.0, gt=0.0)

    @field_validator("quantiles")
    @classmethod
    def _valid_quantiles(cls, v: list[float]) -> list[float]:
        if any(not 0.0 < q < 1.0 for q in v):
            raise ValueError("quantiles must lie strictly between 0 and 1")
        if sorted(set(v)) != v:
            raise ValueError("quantiles must be strictly increasing")
        return v


class MonitorConfig(StrictModel):
    #: Below this many rows (per sensor, after dropping NaN) a batch gets "insufficient data".
    min_batch_rows: PositiveInt = 500
    #: A batch must span at least this many hours: telemetry has daily cycles, so a batch covering
    #: part of a day differs from the whole-day reference without any drift.
    min_batch_hours: float = Field(default=24.0, gt=0.0)
    #: Compare a batch with a reference resampled to the batch's own mix of these conditions:
    #: ``asset`` (assets run at different levels), ``hour`` (daily cycle) and ``weekend`` (weekends
    #: run at lower load). A condition the reference lacks for some batch rows is dropped, last first.
    match_on: list[MatchKey] = Field(default_factory=lambda: list(MATCH_KEYS))
    #: Days of week (Monday = 0) that count as weekend for ``match_on: weekend``.
    weekend_days: list[int] = Field(default_factory=lambda: [5, 6])
    #: Rows of the batch and of the matched reference that Evidently compares (evenly thinned
    #: above this): the effect size is already precise at this size, Evidently's cost is not.
    max_rows: PositiveInt = 20_000
    #: Share of drifted sensors that makes a batch "drifted".
    drift_share: float = Field(default=0.3, gt=0.0, le=1.0)
    #: Default test for every sensor; ``sensors`` overrides it per sensor.
    default: ColumnDriftConfig = ColumnDriftConfig()
    sensors: dict[str, ColumnDriftConfig] = Field(default_factory=dict)
    #: Test for the model's ``score`` column (reported, not counted in the sensor drift share).
    score: ColumnDriftConfig = ColumnDriftConfig()
    #: Act only when k of the last m decided batches drifted.
    k: PositiveInt = 2
    m: PositiveInt = 3
    #: At most one retrain per this many decided batches.
    cooldown_batches: PositiveInt = 10
    #: A retrain still "in progress" after this many decided batches is presumed lost and cleared.
    retrain_timeout_batches: PositiveInt = 20
    #: How many batch ids the state remembers to refuse monitoring the same batch twice.
    remember_batches: PositiveInt = 500
    #: Evidently workspace project (created once, reused by name).
    project: str = "plantwatch"
    guard: GuardConfig = GuardConfig()

    @field_validator("weekend_days")
    @classmethod
    def _valid_days(cls, v: list[int]) -> list[int]:
        if any(not 0 <= d <= 6 for d in v):
            raise ValueError("weekend_days are days of week 0 (Monday) .. 6 (Sunday)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> MonitorConfig:
        if self.k > self.m:
            raise ValueError(f"k ({self.k}) must not exceed m ({self.m})")
        if self.max_rows < self.min_batch_rows:
            raise ValueError(
                f"max_rows ({self.max_rows}) must not be below min_batch_rows ({self.min_batch_rows})"
            )
        return self

    def column_test(self, sensor: str) -> ColumnDriftConfig:
        """The drift test configured for ``sensor`` (its override, else the default)."""
        return self.sensors.get(sensor, self.default)
