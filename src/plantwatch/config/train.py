"""``split:``, ``features:``, ``train:``, ``gates:`` and ``scale:`` blocks — the training pipeline."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from plantwatch.config.base import StrictModel


class SplitConfig(StrictModel):
    """Time-based split; the holdout is always the most recent period and is never fitted on."""

    validation_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)


class FeaturesConfig(StrictModel):
    windows: list[PositiveInt] = Field(default_factory=lambda: [5, 30])
    stats: list[Literal["mean", "std", "min", "max", "slope"]] = Field(
        default_factory=lambda: ["mean", "std", "min", "max", "slope"]
    )


class TrainConfig(StrictModel):
    candidates: list[Literal["baseline", "custom"]] = Field(default_factory=lambda: ["baseline", "custom"])
    seed: int = 0
    cv_folds: PositiveInt = 5
    #: Most false alarms per asset per day that operators accept; sets the alert threshold.
    alert_budget: float = Field(default=1.0, gt=0.0)
    #: Review band = scores in [threshold * (1 - review_band), threshold) go to a person.
    review_band: float = Field(default=0.15, ge=0.0, lt=1.0)


class GatesConfig(StrictModel):
    min_pr_auc: float = Field(default=0.3, ge=0.0, le=1.0)
    min_event_recall: float = Field(default=0.5, ge=0.0, le=1.0)
    max_false_alarms_per_asset_day: float = Field(default=2.0, gt=0.0)
    min_cv_ci_low: float = Field(default=0.2, ge=0.0, le=1.0)
    max_cv_std: float = Field(default=0.2, ge=0.0)
    non_inferiority_tolerance: float = Field(default=0.02, ge=0.0)
    min_gain_over_baseline: float = Field(default=0.02)


class ScaleConfig(StrictModel):
    """Where CV folds and candidate fits run: a Dask scheduler address, or local when unset."""

    dask_address: str | None = None
    local_workers: PositiveInt = 2
