"""``split:``, ``features:``, ``train:``, ``gates:`` and ``scale:`` blocks — the training pipeline."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveInt

from plantwatch.config.base import StrictModel


class SplitConfig(StrictModel):
    """Time-based split; the holdout is the most recent period of the FIRST split and is never fitted on.

    ``pin_path``: where the first split's periods are pinned (``plantwatch.split_pin``), so every later
    retrain is judged on the same holdout rows and newer data goes to training. ``null`` re-cuts the
    most recent period each time.
    """

    validation_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    #: When the most recent ``holdout_fraction`` holds fewer than ``gates.min_holdout_episodes`` fault
    #: episodes, the FIRST split moves the holdout start earlier until it does, up to this share of the
    #: rows (``plantwatch.split_pin.grow_for_evidence``); the pin then freezes that holdout.
    max_holdout_fraction: float = Field(default=0.35, gt=0.0, lt=1.0)
    pin_path: str | None = "data/split_pin.json"


RollingStat = Literal["mean", "std", "min", "max", "slope"]
CandidateKind = Literal["baseline", "custom"]


def _both_candidates() -> list[CandidateKind]:
    return ["baseline", "custom"]


def _all_stats() -> list[RollingStat]:
    return ["mean", "std", "min", "max", "slope"]


class FeaturesConfig(StrictModel):
    """``features:`` block — what ``plantwatch.features.FeatureBuilder`` computes per sensor."""

    #: Trailing rolling windows, in readings per asset (causal: current and earlier readings only).
    windows: list[PositiveInt] = Field(default_factory=lambda: [5, 30, 120], min_length=1)
    stats: list[RollingStat] = Field(default_factory=_all_stats)
    #: Cross-sensor residuals (each sensor vs. a robust linear model of the others).
    residuals: bool = True
    #: Stuck-sensor run length is capped at, and divided by, this many readings.
    stuck_cap: PositiveInt = 30
    #: Floor of a per-asset scale, as a fraction of the fleet scale (constant sensors stay finite).
    min_scale: float = Field(default=1e-3, gt=0.0, le=1.0)
    #: Rows sampled (seeded) to fit the cross-sensor model: keeps fit time flat at 1M rows.
    max_fit_rows: PositiveInt = 200_000


#: Hyperparameters of ``EnsembleDetector`` that ``train.model.grid`` may vary.
GridKey = Literal[
    "n_components",
    "top_k",
    "w_zscore",
    "w_iforest",
    "w_covariance",
    "w_pca_residual",
    "combine",
    "z_clip",
    "tail_quantile",
]


class ModelConfig(StrictModel):
    """``train.model`` sub-block — the custom model (``plantwatch.model.EnsembleDetector``).

    ``grid`` lists alternatives that time-ordered CV (``plantwatch.training.train_candidates``)
    may pick from; every other value is fixed. Keep it tiny: each grid point costs a full CV round.
    """

    contamination: float = Field(default=0.01, gt=0.0, le=0.5)
    n_estimators: PositiveInt = 100
    max_samples: int = Field(default=256, ge=2)
    n_components: PositiveInt = 8
    top_k: PositiveInt = 10
    w_zscore: float = Field(default=1.0, ge=0.0)
    w_iforest: float = Field(default=1.0, ge=0.0)
    w_covariance: float = Field(default=1.0, ge=0.0)
    w_pca_residual: float = Field(default=0.0, ge=0.0)
    combine: Literal["mean", "max"] = "mean"
    z_clip: float = Field(default=10.0, gt=0.0)
    #: The z-score detector measures each feature in units of its own training tail at this quantile.
    tail_quantile: float = Field(default=0.99, gt=0.5, lt=1.0)
    #: Feature kinds (``<sensor>__<kind>``) the robust-covariance / PCA detectors look at jointly.
    joint_kinds: list[str] | None = Field(default_factory=lambda: ["dev"])
    max_fit_rows: int = Field(default=50_000, ge=2)
    mcd_max_rows: int = Field(default=3_000, ge=2)
    grid: dict[GridKey, list[float | int | str]] = Field(default_factory=dict)

    def estimator_params(self) -> dict[str, Any]:
        """Constructor keyword arguments of ``EnsembleDetector`` (everything but the grid)."""
        params = self.model_dump(exclude={"grid"})
        if params["joint_kinds"] is not None:
            params["joint_kinds"] = tuple(params["joint_kinds"])
        return params


class TrainConfig(StrictModel):
    """``train:`` block — candidates, cross-validation and the operating point (see training.py)."""

    candidates: list[CandidateKind] = Field(default_factory=_both_candidates, min_length=1)
    seed: int = 0
    #: Time-ordered, expanding-window folds over train+validation (the holdout is never touched).
    cv_folds: int = Field(default=5, ge=5)
    #: Share of train+validation (in time order) that is history only; the folds' test blocks split
    #: the rest. Never less than the official training part when ``data.train_rows`` is set. Keep
    #: the first fold's history longer than the data's seasonal cycle (a week for most plants).
    cv_min_train_fraction: float = Field(default=0.7, gt=0.0, lt=1.0)
    #: Fit detectors on normal rows only ("fit on normal"): labelled anomalies are left out of fitting.
    fit_on_normal: bool = True
    #: Most false alarms (alert episodes overlapping no labelled anomaly) per asset per day that
    #: operators accept; sets the alert threshold on the validation period.
    alert_budget: float = Field(default=1.0, gt=0.0)
    #: The threshold is set so that validation stays within this share of the budget: a threshold
    #: that exactly meets the budget on one period overshoots it on the next about half the time
    #: (1.0 = aim at the budget itself).
    calibration_headroom: float = Field(default=0.8, gt=0.0, le=1.0)
    #: Alerts of one asset with at most this many quiet readings between them are one alert episode
    #: (one page to an operator); false alarms and the budget count episodes.
    episode_gap: int = Field(default=15, ge=0)
    #: Share of normal validation readings sent to review just below the alert threshold (queue load).
    review_band: float = Field(default=0.005, ge=0.0, lt=1.0)
    #: The custom model's hyperparameters (and the tiny CV grid), see ``ModelConfig``.
    model: ModelConfig = ModelConfig()


class GatesConfig(StrictModel):
    """``gates:`` block — what a candidate must reach before it may be promoted (see gating.py)."""

    #: Floors on the chosen candidate's holdout metrics.
    min_pr_auc: float = Field(default=0.3, ge=0.0, le=1.0)
    min_event_recall: float = Field(default=0.5, ge=0.0, le=1.0)
    #: Ceiling on holdout false alarms per asset-day (the alert budget plus the slack tolerated).
    max_false_alarms_per_asset_day: float = Field(default=2.0, gt=0.0)
    #: Floor on the lower end of the CV PR-AUC interval, ceiling on its fold-to-fold std.
    min_cv_ci_low: float = Field(default=0.15, ge=0.0, le=1.0)
    max_cv_std: float = Field(default=0.35, ge=0.0)
    #: Confidence level of the CV t-interval and of the bootstrap interval.
    ci_level: float = Field(default=0.95, gt=0.0, lt=1.0)
    #: Candidate vs production on the frozen holdout: lower end of the PR-AUC difference >= -tolerance.
    non_inferiority_tolerance: float = Field(default=0.02, ge=0.0)
    bootstrap_resamples: int = Field(default=1000, ge=100)
    #: Contiguous blocks the holdout is cut into for the (moving-block) bootstrap.
    bootstrap_blocks: int = Field(default=40, ge=5)
    #: The custom model is chosen only if its holdout PR-AUC beats the baseline's by this much.
    min_gain_over_baseline: float = Field(default=0.02)
    #: Evidence: the holdout-based gates (PR-AUC, event recall, non-inferiority) judge only when the
    #: holdout holds at least this many labelled fault episodes; with fewer the decision is
    #: "insufficient evidence" (refused, never passed or failed on noise).
    min_holdout_episodes: PositiveInt = 5
    #: The same rule per CV fold: a fold whose test block holds fewer fault episodes is left out of the
    #: CV gates' statistics (reported, flagged ``judged: false``): one episode's difficulty is not
    #: fold-to-fold stability.
    min_fold_episodes: PositiveInt = 3
    #: With fewer judged folds, ``min_cv_ci_low`` / ``max_cv_std`` are not judged (a t-interval or std
    #: over 1-2 values is noise). Not by itself "insufficient evidence": the holdout decides that.
    min_cv_folds: int = Field(default=3, ge=2)
    #: Labelled runs of one asset at most this many readings apart are ONE fault episode when counting
    #: evidence and when aligning bootstrap blocks (a burst of spikes is one fault, not eight).
    episode_merge_gap: int = Field(default=60, ge=0)


class ScaleConfig(StrictModel):
    """Where CV folds and candidate fits run: a Dask scheduler address, or local when unset."""

    #: ``tcp://host:port`` of a running Dask scheduler; ``$PLANTWATCH_DASK_ADDRESS`` overrides it.
    dask_address: str | None = None
    #: Local processes for folds/candidates when no cluster is named (1 = serial, in-process).
    local_workers: PositiveInt = 2
