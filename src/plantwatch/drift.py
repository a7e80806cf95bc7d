"""Drift detection (Evidently) and the drift decision policy — the pure core of ``plantwatch monitor``.

Nothing here reads or writes files: the I/O shell (``plantwatch.monitoring``) loads the batch, the
reference and the policy state, calls :func:`check_drift` and :func:`decide`, then stores the
snapshot, the HTML report and the new state.

Why the test is calibrated the way it is (README "Drift monitoring" has the numbers):

* Evidently's default (normed Wasserstein, threshold 0.1) and KS flag every clean daily batch of the
  simulated fleet, and KS flags 0.02 sigma shifts once a batch has 100k rows. plantwatch measures
  drift as an *effect size*:
  normed Wasserstein is the distance between the two distributions in units of the reference
  standard deviation, so its threshold means the same thing at 1k and at 100k rows.
* Sampling noise of that effect size grows as a batch shrinks, and telemetry has daily cycles: two
  hours of data differ from the whole-day reference without any drift. So a batch must hold
  ``min_batch_rows`` readings per sensor AND span ``min_batch_hours`` (a full day by default),
  otherwise it gets "insufficient data" and no decision.
* The reference is resampled to the batch's own mix of asset x hour-of-day x weekday/weekend
  (``match_on``): assets run at different levels and weekends at lower load, so a clean Saturday
  compared with the whole reference looks like 0.5 sigma of drift; matched, it is about 0.04.
* One drifted batch does not act: the policy needs drift in k of the last m batches, then a cooldown
  (and a "retrain in progress" flag) keeps retrains from piling up.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from plantwatch import schema
from plantwatch.config.monitor import ColumnDriftConfig, MonitorConfig
from plantwatch.errors import ConfigError, DataError, UsageError

if TYPE_CHECKING:  # evidently costs ~7 s to import: only the functions that need it import it
    from evidently import Report
    from evidently.core.report import Snapshot

#: Columns the scoring service adds to a scored reading (inference log).
SCORE = "score"
DECISION = "decision"
MODEL_VERSION = "model_version"
#: Per-row helper columns whose batch mean is a per-batch aggregate the dashboard can plot.
ALERTS_PER_ASSET_DAY = "alerts_per_asset_day"
REVIEWS_PER_ASSET_DAY = "reviews_per_asset_day"
ALERT_BUDGET = "alert_budget"
ALERT_LIMIT = "alert_rate_limit"
ROWS_IN_BATCH = "rows_in_batch"
SECONDS_PER_DAY = 86_400.0
SECONDS_PER_HOUR = 3_600.0

STATUS_DECIDED = "decided"
STATUS_INSUFFICIENT = "insufficient data"

RetrainDecision = Literal["triggered", "cooling down", "not needed", "insufficient data"]


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColumnDrift:
    """One column's drift test: Evidently's score and its yes/no verdict (the test result)."""

    column: str
    method: str
    threshold: float
    score: float
    drifted: bool


@dataclass(frozen=True)
class BatchStats:
    """Label-free facts about a batch that the policy, the guard and the dashboard use."""

    rows: int
    assets: int
    start: str | None
    end: str | None
    span_hours: float
    asset_days: float
    alerts_per_asset_day: float | None = None
    reviews_per_asset_day: float | None = None
    score_quantiles: dict[str, float] = field(default_factory=dict)
    model_versions: list[str] = field(default_factory=list)

    @property
    def has_scores(self) -> bool:
        return bool(self.score_quantiles)


@dataclass(frozen=True)
class DriftResult:
    """Outcome of one drift check. ``drift`` is ``None`` when the batch was too small to decide."""

    status: str
    reason: str
    drift: bool | None
    drift_share: float | None
    sensors: dict[str, ColumnDrift]
    score: ColumnDrift | None = None
    #: Conditions the reference was matched on, and how many reference rows the batch was compared with.
    matched_on: list[str] = field(default_factory=list)
    reference_rows: int = 0
    #: Batch rows that went into the comparison (the batch thinned to ``max_rows``).
    rows_compared: int = 0

    @property
    def decided(self) -> bool:
        return self.status == STATUS_DECIDED

    @property
    def drifted_sensors(self) -> list[str]:
        return [name for name, col in self.sensors.items() if col.drifted]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["drifted_sensors"] = self.drifted_sensors
        return out


@dataclass
class DriftCheck:
    """A drift result plus the Evidently snapshot it came from (the shell stores the snapshot)."""

    result: DriftResult
    stats: BatchStats
    snapshot: Snapshot


def quantile_key(q: float) -> str:
    """JSON-safe key of a quantile (``0.99`` -> ``"0.99"``)."""
    return f"{q:g}"


# --------------------------------------------------------------------------------------------------
# batch facts
# --------------------------------------------------------------------------------------------------
def batch_stats(
    batch: pd.DataFrame, interval_s: float, quantiles: Sequence[float], episode_gap: int = 0
) -> BatchStats:
    """Rows, time span, asset-days and (when the batch was scored) alert/review rates and score quantiles.

    Asset-days count readings, not wall-clock spans: each reading stands for ``interval_s`` seconds of
    one asset, so gaps do not inflate the denominator of the alert rate. Alerts are counted as alert
    EPISODES (per asset, runs merged across at most ``episode_gap`` quiet readings) — the unit the
    alert budget is defined in (``plantwatch.evaluation``), so the guard compares like with like.
    """
    rows = len(batch)
    asset_days = rows * interval_s / SECONDS_PER_DAY
    start = end = None
    span_hours = 0.0
    if rows and schema.TIMESTAMP in batch:
        ts = pd.to_datetime(batch[schema.TIMESTAMP])
        start, end = ts.min(), ts.max()
        span_hours = ((end - start).total_seconds() + interval_s) / SECONDS_PER_HOUR
    assets = int(batch[schema.ASSET].nunique()) if schema.ASSET in batch else 1
    alerts = reviews = None
    if DECISION in batch and asset_days > 0:
        from plantwatch.evaluation import runs

        keys = [c for c in (schema.ASSET, schema.TIMESTAMP) if c in batch]
        ordered = batch.sort_values(keys, kind="stable")
        decisions = ordered[DECISION].astype(str).to_numpy()
        groups = ordered[schema.ASSET].to_numpy() if schema.ASSET in ordered else np.zeros(rows)
        episodes = runs(decisions == schema.DECISION_ALERT, groups, episode_gap)
        alerts = float(len(episodes) / asset_days)
        reviews = float((decisions == schema.DECISION_REVIEW).sum() / asset_days)
    score_q: dict[str, float] = {}
    if SCORE in batch and batch[SCORE].notna().any():
        values = batch[SCORE].astype(float).quantile(list(quantiles))
        score_q = {quantile_key(q): float(v) for q, v in zip(quantiles, values, strict=True)}
    versions = sorted(batch[MODEL_VERSION].dropna().astype(str).unique()) if MODEL_VERSION in batch else []
    return BatchStats(
        rows=rows,
        assets=assets,
        start=None if start is None else start.isoformat(),
        end=None if end is None else end.isoformat(),
        span_hours=float(span_hours),
        asset_days=float(asset_days),
        alerts_per_asset_day=alerts,
        reviews_per_asset_day=reviews,
        score_quantiles=score_q,
        model_versions=versions,
    )


def insufficiency(
    batch: pd.DataFrame, sensors: Sequence[str], cfg: MonitorConfig, stats: BatchStats
) -> str | None:
    """Why ``batch`` is too small to decide on, or ``None`` when it is large enough."""
    if stats.span_hours < cfg.min_batch_hours:
        return f"batch spans {stats.span_hours:.1f} h < min_batch_hours {cfg.min_batch_hours:g} (daily cycle)"
    counts = {s: int(batch[s].notna().sum()) for s in sensors}
    short = {s: n for s, n in counts.items() if n < cfg.min_batch_rows}
    if short:
        name, n = min(short.items(), key=lambda kv: kv[1])
        return f"{name} has {n} readings < min_batch_rows {cfg.min_batch_rows}"
    return None


@dataclass(frozen=True)
class MatchedReference:
    """The reference rows a batch is compared with, and which conditions they were matched on."""

    frame: pd.DataFrame
    keys: tuple[str, ...]
    note: str | None = None


def _condition_columns(frame: pd.DataFrame, keys: Sequence[str], weekend_days: Sequence[int]) -> pd.DataFrame:
    ts = pd.to_datetime(frame[schema.TIMESTAMP])
    columns: dict[str, Any] = {}
    for key in keys:
        if key == "asset":
            columns[key] = frame[schema.ASSET].astype(str).to_numpy()
        elif key == "hour":
            columns[key] = ts.dt.hour.to_numpy()
        elif key == "weekend":
            columns[key] = ts.dt.dayofweek.isin(list(weekend_days)).to_numpy()
    return pd.DataFrame(columns)


def _stratum_codes(
    reference: pd.DataFrame, batch: pd.DataFrame, keys: Sequence[str], weekend_days: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Integer stratum code per row of each frame, one code space for both."""
    both = pd.concat(
        [_condition_columns(reference, keys, weekend_days), _condition_columns(batch, keys, weekend_days)],
        ignore_index=True,
    )
    codes = both.groupby(list(keys), sort=False).ngroup().to_numpy()
    return codes[: len(reference)], codes[len(reference) :]


def _resample_to(
    reference: pd.DataFrame, ref_codes: np.ndarray, batch_codes: np.ndarray, max_rows: int
) -> pd.DataFrame:
    """Reference rows in the batch's stratum proportions, as many as the scarcest stratum allows.

    Rows are taken evenly spaced in time within each stratum (deterministic, and spread over the
    whole reference window rather than its first days).
    """
    n_codes = int(max(ref_codes.max(initial=-1), batch_codes.max(initial=-1))) + 1
    batch_counts = np.bincount(batch_codes, minlength=n_codes)
    ref_counts = np.bincount(ref_codes, minlength=n_codes)
    wanted = np.flatnonzero(batch_counts)
    share = batch_counts[wanted] / batch_counts.sum()
    total = min(float(np.min(ref_counts[wanted] / share)), float(max_rows))
    take = np.clip(np.floor(share * total + 0.5).astype(np.int64), 1, ref_counts[wanted])
    order = np.argsort(ref_codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(ref_counts)])
    picks = []
    for code, n in zip(wanted, take, strict=True):
        rows = order[starts[code] : starts[code + 1]]
        picks.append(rows[np.linspace(0, len(rows) - 1, int(n)).round().astype(np.int64)])
    return reference.iloc[np.sort(np.concatenate(picks))]


def match_reference(reference: pd.DataFrame, batch: pd.DataFrame, cfg: MonitorConfig) -> MatchedReference:
    """The reference resampled to the batch's mix of conditions (``cfg.match_on``).

    Without this, a clean weekend day (lower load) or a batch of a few assets differs from the whole
    reference by half a standard deviation or more, which no sane threshold can tell from drift.
    When the reference has no rows for some batch stratum (e.g. a training window without a
    weekend), the last condition is dropped and matching is retried; the result says so.
    """
    keys = [k for k in cfg.match_on if k != "asset" or (schema.ASSET in batch and schema.ASSET in reference)]
    dropped: list[str] = []
    while keys:
        ref_codes, batch_codes = _stratum_codes(reference, batch, keys, cfg.weekend_days)
        ref_has = np.bincount(ref_codes, minlength=int(batch_codes.max(initial=-1)) + 1) > 0
        if ref_has[batch_codes].all():
            note = f"reference has no rows matching on {', '.join(dropped)}; dropped" if dropped else None
            frame = _resample_to(reference, ref_codes, batch_codes, cfg.max_rows)
            return MatchedReference(frame, tuple(keys), note)
        dropped.insert(0, keys.pop())
    note = f"reference not matched (no rows for {', '.join(dropped)})" if dropped else None
    return MatchedReference(_thin(reference, cfg.max_rows), (), note)


def _check_inputs(
    reference: pd.DataFrame, batch: pd.DataFrame, sensors: Sequence[str], cfg: MonitorConfig
) -> None:
    if not sensors:
        raise ConfigError("monitor: no sensors to check")
    unknown = sorted(set(cfg.sensors) - set(sensors))
    if unknown:
        raise ConfigError(f"monitor.sensors: unknown sensor(s) {', '.join(unknown)} (not in data.sensors)")
    for name, frame in (("batch", batch), ("reference", reference)):
        missing = [s for s in sensors if s not in frame]
        if missing:
            raise DataError(f"{name} lacks sensor column(s): {', '.join(missing)}")
    if reference.empty:
        raise DataError("reference frame is empty")
    if batch.empty:
        raise DataError("batch has no rows")
    if schema.TIMESTAMP not in batch:
        raise DataError(f"batch lacks the {schema.TIMESTAMP} column")


# --------------------------------------------------------------------------------------------------
# the Evidently report
# --------------------------------------------------------------------------------------------------
def _thin(frame: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """At most ``max_rows`` rows, evenly spaced (the frame is in asset/time order, so every asset
    and the whole period stay represented). An effect size is estimated to well under 0.01 sd from
    20k readings, while Evidently's cost grows with rows: thinning keeps a 1M-row check as fast as
    a 20k-row one without moving the verdict."""
    if len(frame) <= max_rows:
        return frame
    return frame.iloc[np.linspace(0, len(frame) - 1, max_rows).round().astype(np.int64)]


def _with_aggregates(
    frame: pd.DataFrame, stats: BatchStats, alert_budget: float, cfg: MonitorConfig
) -> pd.DataFrame:
    """Constant per-row columns holding whole-batch aggregates, so that Evidently (which plots column
    statistics) can put them on the dashboard: their mean is the aggregate.

    Taken from ``stats`` (the full batch), not from the possibly thinned rows: alerts are rare, a
    subsample would make the alert rate noisy.
    """
    out = frame.copy()
    out[ROWS_IN_BATCH] = float(stats.rows)
    if stats.alerts_per_asset_day is not None:
        out[ALERTS_PER_ASSET_DAY] = stats.alerts_per_asset_day
        out[REVIEWS_PER_ASSET_DAY] = stats.reviews_per_asset_day
        out[ALERT_BUDGET] = float(alert_budget)
        out[ALERT_LIMIT] = float(alert_budget * cfg.guard.alert_rate_factor)
    return out


def _aggregate_columns(frame: pd.DataFrame) -> list[str]:
    names = (ROWS_IN_BATCH, ALERTS_PER_ASSET_DAY, REVIEWS_PER_ASSET_DAY, ALERT_BUDGET, ALERT_LIMIT)
    return [c for c in names if c in frame]


def build_report(
    sensors: Sequence[str],
    cfg: MonitorConfig,
    *,
    drift: bool,
    with_score_drift: bool,
    scored: bool,
    has_score: bool,
    alert_budget: float,
) -> Report:
    """The one Evidently report per batch: drift tests plus the aggregates the dashboard plots.

    Drift metrics: ``ValueDrift`` per sensor (its test result is the per-sensor verdict) and
    ``DriftedColumnsCount`` (share of drifted sensors, with the batch-level test). Aggregates: rows
    in the batch, alert/review rate per asset-day against the budget and the guard's limit, score
    quantiles. Default tests of the aggregates compare with the reference, which has no decisions,
    so they are replaced by meaningful ones or none.
    """
    from evidently import Report
    from evidently.metrics import DriftedColumnsCount, MeanValue, QuantileValue, ValueDrift
    from evidently.tests import gte, lte

    metrics: list[Any] = [MeanValue(column=ROWS_IN_BATCH, tests=[gte(cfg.min_batch_rows)])]
    if drift:
        tests = {s: cfg.column_test(s) for s in sensors}
        metrics += [ValueDrift(column=s, method=t.method, threshold=t.threshold) for s, t in tests.items()]
        metrics.append(
            DriftedColumnsCount(
                columns=list(sensors),
                per_column_method={s: t.method for s, t in tests.items()},
                per_column_threshold={s: t.threshold for s, t in tests.items()},
                drift_share=cfg.drift_share,
            )
        )
        if with_score_drift:
            metrics.append(ValueDrift(column=SCORE, method=cfg.score.method, threshold=cfg.score.threshold))
    if scored:
        limit = alert_budget * cfg.guard.alert_rate_factor
        metrics += [
            MeanValue(column=ALERTS_PER_ASSET_DAY, tests=[lte(limit)]),
            MeanValue(column=ALERT_BUDGET, tests=[]),
            MeanValue(column=ALERT_LIMIT, tests=[]),
            MeanValue(column=REVIEWS_PER_ASSET_DAY, tests=[]),
        ]
    if has_score:
        metrics += [QuantileValue(column=SCORE, quantile=q, tests=[]) for q in cfg.guard.quantiles]
    return Report(metrics, include_tests=True)


def _dataset(frame: pd.DataFrame, numerical: list[str]) -> Any:
    from evidently import DataDefinition, Dataset

    return Dataset.from_pandas(frame[numerical], data_definition=DataDefinition(numerical_columns=numerical))


def _parse_columns(snapshot: Snapshot, tests: dict[str, ColumnDriftConfig]) -> dict[str, ColumnDrift]:
    """Per-column drift from the snapshot: score from ``ValueDrift``, verdict from its test (FAIL = drift)."""
    data = snapshot.dict()
    scores: dict[str, float] = {}
    for metric in data["metrics"]:
        config = metric["config"]
        if config["type"].endswith(":ValueDrift") and config.get("column") in tests:
            scores[config["column"]] = float(metric["value"])
    verdicts: dict[str, bool] = {}
    for test in data["tests"]:
        params = test["metric_config"]["params"]
        if params["type"].endswith(":ValueDrift") and params.get("column") in tests:
            verdicts[params["column"]] = str(getattr(test["status"], "value", test["status"])) == "FAIL"
    out = {}
    for column, t in tests.items():
        if column not in scores or column not in verdicts:
            raise DataError(f"Evidently returned no drift result for {column}")
        out[column] = ColumnDrift(column, t.method, t.threshold, scores[column], verdicts[column])
    return out


def check_drift(
    reference: pd.DataFrame,
    batch: pd.DataFrame,
    sensors: Sequence[str],
    cfg: MonitorConfig,
    *,
    interval_s: float,
    alert_budget: float,
    batch_id: str = "batch",
    timestamp: datetime | None = None,
    episode_gap: int = 0,
) -> DriftCheck:
    """Per-sensor drift of ``batch`` against ``reference`` with Evidently, plus the batch's aggregates.

    Runs one ``Report([...], include_tests=True).run(current, reference)`` on a shared
    ``DataDefinition``; the reference is first resampled to the batch's conditions
    (:func:`match_reference`) and both sides are thinned to ``max_rows``. The model's ``score``
    column is tested too when both frames carry it (reported, not counted in the sensor drift
    share). Batches below the minimum size or span get ``status="insufficient data"`` and
    ``drift=None``; their snapshot holds only the aggregates.
    """
    _check_inputs(reference, batch, sensors, cfg)
    batch = batch.sort_values([c for c in (schema.ASSET, schema.TIMESTAMP) if c in batch], kind="stable")
    stats = batch_stats(batch, interval_s, cfg.guard.quantiles, episode_gap)
    why_not = insufficiency(batch, sensors, cfg, stats)
    current = _with_aggregates(_thin(batch, cfg.max_rows), stats, alert_budget, cfg)
    has_score = bool(SCORE in batch and batch[SCORE].notna().any())
    with_score_drift = why_not is None and has_score and SCORE in reference and reference[SCORE].notna().any()
    report = build_report(
        sensors,
        cfg,
        drift=why_not is None,
        with_score_drift=bool(with_score_drift),
        scored=stats.alerts_per_asset_day is not None,
        has_score=has_score,
        alert_budget=alert_budget,
    )
    numerical = list(sensors) + ([SCORE] if has_score else []) + _aggregate_columns(current)
    when = timestamp or (pd.Timestamp(stats.end).to_pydatetime() if stats.end else None)
    status = STATUS_INSUFFICIENT if why_not else STATUS_DECIDED
    run_args: dict[str, Any] = {
        "timestamp": when,
        "tags": ["batch", status],
        "metadata": {"batch_id": batch_id},
    }
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # NaN helper columns in the reference make Evidently divide 0/0 in its column summaries.
        warnings.simplefilter("ignore", RuntimeWarning)
        if why_not is not None:
            snapshot = report.run(_dataset(current, numerical), None, name=batch_id, **run_args)
            result = DriftResult(STATUS_INSUFFICIENT, why_not, None, None, {})
            return DriftCheck(result, stats, snapshot)
        matched = match_reference(reference, batch, cfg)
        ref = matched.frame.copy()
        for column in numerical:
            if column not in ref:
                ref[column] = np.nan  # helper columns exist only in the batch; Evidently needs both
        snapshot = report.run(
            _dataset(current, numerical), _dataset(ref, numerical), name=batch_id, **run_args
        )
    per_sensor = _parse_columns(snapshot, {s: cfg.column_test(s) for s in sensors})
    score_drift = _parse_columns(snapshot, {SCORE: cfg.score})[SCORE] if with_score_drift else None
    n_drifted = sum(c.drifted for c in per_sensor.values())
    share = n_drifted / len(per_sensor)
    drifted = share >= cfg.drift_share
    reason = (
        f"{n_drifted} of {len(per_sensor)} sensors drifted "
        f"(share {share:.2f} {'>=' if drifted else '<'} drift_share {cfg.drift_share:g})"
    )
    if matched.note:
        reason = f"{reason}; {matched.note}"
    result = DriftResult(
        STATUS_DECIDED,
        reason,
        drifted,
        share,
        per_sensor,
        score_drift,
        matched_on=list(matched.keys),
        reference_rows=len(ref),
        rows_compared=len(current),
    )
    return DriftCheck(result, stats, snapshot)


# --------------------------------------------------------------------------------------------------
# policy: k of m, cooldown, retrain-in-progress, post-promotion guard (pure, serialisable state)
# --------------------------------------------------------------------------------------------------
class _StateModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetrainRequest(_StateModel):
    """What the retrain action receives (and what the state remembers while a retrain runs)."""

    batch_id: str
    decided_batch: int
    reason: str
    drift_share: float | None = None
    drifted_sensors: list[str] = Field(default_factory=list)


class GuardState(_StateModel):
    """A freshly promoted model under watch: its reference score quantiles and batches still to check."""

    model_version: str
    reference_quantiles: dict[str, float]
    batches_left: int


class PolicyState(_StateModel):
    """Everything the policy remembers between batches; stored as ``monitoring/state.json``."""

    schema_version: int = 1
    decided_batches: int = 0
    history: list[bool] = Field(default_factory=list)
    last_trigger_batch: int | None = None
    retrain_in_progress: bool = False
    retrain_request: RetrainRequest | None = None
    retrains_triggered: int = 0
    guard: GuardState | None = None
    rollbacks: int = 0
    production_version: str | None = None
    seen_batches: list[str] = Field(default_factory=list)

    def has_seen(self, batch_id: str) -> bool:
        return batch_id in self.seen_batches


class PolicyDecision(_StateModel):
    """The policy's answer for one batch; ``rollback`` is executed by the caller via the registry."""

    batch_id: str
    retrain: RetrainDecision
    reason: str
    rollback: bool = False
    rollback_reason: str | None = None
    guard: str = "inactive"
    retrain_request: RetrainRequest | None = None
    notes: list[str] = Field(default_factory=list)


def guard_breach(guard: GuardState, stats: BatchStats, alert_budget: float, cfg: MonitorConfig) -> str | None:
    """Why the promoted model looks broken on this batch (label-free), or ``None``.

    Two symptoms: alerts per asset-day above ``alert_rate_factor`` x the budget the threshold was set
    for, or a score quantile that moved by more than ``max_quantile_shift`` reference spreads.
    """
    limit = alert_budget * cfg.guard.alert_rate_factor
    if stats.alerts_per_asset_day is not None and stats.alerts_per_asset_day > limit:
        return (
            f"alert rate {stats.alerts_per_asset_day:.2f}/asset-day > {cfg.guard.alert_rate_factor:g} x "
            f"budget {alert_budget:g} = {limit:g}"
        )
    ref = guard.reference_quantiles
    if not ref or not stats.score_quantiles:
        return None
    spread = max(ref.values()) - min(ref.values())
    if spread <= 0 or not math.isfinite(spread):
        return None
    for key, ref_value in ref.items():
        live = stats.score_quantiles.get(key)
        if live is None:
            continue
        shift = abs(live - ref_value) / spread
        if shift > cfg.guard.max_quantile_shift:
            return (
                f"score quantile {key} moved {shift:.2f} reference spreads ({ref_value:.4g} -> {live:.4g}) "
                f"> max_quantile_shift {cfg.guard.max_quantile_shift:g}"
            )
    return None


def _apply_guard(
    state: PolicyState, stats: BatchStats, alert_budget: float, cfg: MonitorConfig
) -> tuple[PolicyState, bool, str | None, str]:
    """Advance the guard by one decided batch: (new state, rollback?, why, guard status text)."""
    guard = state.guard
    if guard is None:
        return state, False, None, "inactive"
    if stats.model_versions and guard.model_version not in stats.model_versions:
        return state, False, None, f"watching {guard.model_version} (batch scored by another version)"
    if not stats.has_scores and stats.alerts_per_asset_day is None:
        return state, False, None, f"watching {guard.model_version} (batch not scored)"
    breach = guard_breach(guard, stats, alert_budget, cfg)
    if breach is not None:
        new = state.model_copy(update={"guard": None, "rollbacks": state.rollbacks + 1})
        return new, True, breach, f"breached by {guard.model_version}"
    left = guard.batches_left - 1
    if left <= 0:
        return state.model_copy(update={"guard": None}), False, None, f"passed ({guard.model_version})"
    new_guard = guard.model_copy(update={"batches_left": left})
    return state.model_copy(update={"guard": new_guard}), False, None, f"watching ({left} batches left)"


def _remember(state: PolicyState, batch_id: str, cfg: MonitorConfig) -> list[str]:
    return (state.seen_batches + [batch_id])[-cfg.remember_batches :]


def decide(
    state: PolicyState,
    batch_id: str,
    result: DriftResult,
    stats: BatchStats,
    cfg: MonitorConfig,
    alert_budget: float,
) -> tuple[PolicyDecision, PolicyState]:
    """One policy step: retrain = triggered | cooling down | not needed | insufficient data, + rollback.

    * insufficient data: nothing changes but the list of seen batches (no decision either way);
    * drift must be seen in ``k`` of the last ``m`` decided batches;
    * at most one trigger per ``cooldown_batches`` decided batches, and never while a retrain is in
      progress (the flag is cleared by :func:`finish_retrain`, or presumed lost after
      ``retrain_timeout_batches``);
    * after a promotion (:func:`start_guard`) the next ``guard.batches`` scored batches are checked for
      an alert-rate or score-quantile breach -> ``rollback=True``.
    """
    if state.has_seen(batch_id):
        raise UsageError(f"batch {batch_id} was already monitored")
    seen = _remember(state, batch_id, cfg)
    if not result.decided:
        new = state.model_copy(update={"seen_batches": seen})
        guard = "inactive" if state.guard is None else f"watching ({state.guard.batches_left} batches left)"
        return PolicyDecision(
            batch_id=batch_id, retrain="insufficient data", reason=result.reason, guard=guard
        ), new

    n = state.decided_batches + 1
    history = (state.history + [bool(result.drift)])[-cfg.m :]
    notes: list[str] = []
    new = state.model_copy(update={"decided_batches": n, "history": history, "seen_batches": seen})
    if new.retrain_in_progress and new.retrain_request is not None:
        age = n - new.retrain_request.decided_batch
        if age > cfg.retrain_timeout_batches:
            notes.append(
                f"retrain requested at batch {new.retrain_request.batch_id} presumed lost after {age} batches"
            )
            new = new.model_copy(update={"retrain_in_progress": False, "retrain_request": None})

    new, rollback, rollback_reason, guard_status = _apply_guard(new, stats, alert_budget, cfg)

    drifted = sum(history)
    window = f"drift in {drifted} of the last {len(history)} batches (act at {cfg.k} of {cfg.m})"
    request = None
    if drifted < cfg.k:
        retrain: RetrainDecision = "not needed"
        reason = window
    elif new.retrain_in_progress:
        retrain, reason = "cooling down", f"{window}; a retrain is already in progress"
    elif new.last_trigger_batch is not None and n - new.last_trigger_batch < cfg.cooldown_batches:
        since = n - new.last_trigger_batch
        retrain = "cooling down"
        reason = f"{window}; last retrain {since} batches ago (cooldown {cfg.cooldown_batches})"
    else:
        retrain, reason = "triggered", window
        request = RetrainRequest(
            batch_id=batch_id,
            decided_batch=n,
            reason=window,
            drift_share=result.drift_share,
            drifted_sensors=result.drifted_sensors,
        )
        new = new.model_copy(
            update={
                "last_trigger_batch": n,
                "retrain_in_progress": True,
                "retrain_request": request,
                "retrains_triggered": new.retrains_triggered + 1,
            }
        )
    decision = PolicyDecision(
        batch_id=batch_id,
        retrain=retrain,
        reason=reason,
        rollback=rollback,
        rollback_reason=rollback_reason,
        guard=guard_status,
        retrain_request=request,
        notes=notes,
    )
    return decision, new


def finish_retrain(state: PolicyState) -> PolicyState:
    """The retrain ended (promoted or not): clear the in-progress flag; the cooldown still applies."""
    return state.model_copy(update={"retrain_in_progress": False, "retrain_request": None})


def start_guard(
    state: PolicyState, model_version: str, reference_quantiles: dict[str, float], cfg: MonitorConfig
) -> PolicyState:
    """A model was promoted: watch its next ``guard.batches`` batches; the drift evidence starts afresh.

    ``reference_quantiles`` are the promoted model's score quantiles on its reference data, keyed by
    :func:`quantile_key` of ``cfg.guard.quantiles``.
    """
    missing = [quantile_key(q) for q in cfg.guard.quantiles if quantile_key(q) not in reference_quantiles]
    if missing:
        raise UsageError(f"reference score quantiles lack {', '.join(missing)}")
    guard = GuardState(
        model_version=model_version,
        reference_quantiles={k: float(v) for k, v in reference_quantiles.items()},
        batches_left=cfg.guard.batches,
    )
    return finish_retrain(state).model_copy(
        update={"guard": guard, "history": [], "production_version": model_version}
    )
