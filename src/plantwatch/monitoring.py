"""I/O shell of the monitor stage: batch and reference loading, Evidently workspace, reports, state.

The decisions themselves are pure (``plantwatch.drift``); this module only moves data in and out:

* ``monitoring/workspace`` — local Evidently workspace, project ``monitor.project`` (created once,
  found again by name) with its dashboard panels; one snapshot per monitored batch.
* ``reports/drift/<batch-id>.html`` — the per-batch Evidently report.
* ``monitoring/state.json`` — the policy state, replaced atomically under ``monitoring/.state.lock``
  so that the CLI and a flow cannot interleave two batches.
* ``monitoring/reference_scores.parquet`` — the production model's scores on its reference rows,
  recorded at promotion (score drift + the guard's reference quantiles).

Actions are injected: :func:`monitor_batch` calls ``retrain(request)`` when the policy triggers
(the CLI records the request in the audit log, the flows trigger Prefect) and ``rollback(decision)``
when the post-promotion guard breaches (the caller executes it through the registry).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from filelock import FileLock, Timeout
from pydantic import ValidationError

from plantwatch import schema
from plantwatch.config import MonitorConfig, Params
from plantwatch.drift import (
    ALERT_BUDGET,
    ALERT_LIMIT,
    ALERTS_PER_ASSET_DAY,
    REVIEWS_PER_ASSET_DAY,
    ROWS_IN_BATCH,
    SCORE,
    BatchStats,
    DriftResult,
    PolicyDecision,
    PolicyState,
    RetrainRequest,
    check_drift,
    decide,
    finish_retrain,
    quantile_key,
    start_guard,
)
from plantwatch.errors import DataError, PlantwatchError, RegistryError, UsageError
from plantwatch.paths import ProjectPaths
from plantwatch.registry.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from evidently.sdk.models import DashboardPanelPlot
    from evidently.ui.workspace import Project, Workspace

log = logging.getLogger(__name__)

#: Actions the policy's decisions call (injected by the CLI / flows). A retrain action returns a
#: description of what it did; a rollback action returns the version now in production.
RetrainAction = Callable[[RetrainRequest], str | None]
RollbackAction = Callable[[PolicyDecision], str | None]
#: Validation hook: frame in -> (rows fit for monitoring, JSON-able summary).
Validator = Callable[[pd.DataFrame], tuple[pd.DataFrame, dict[str, Any]]]

#: Dashboard tabs.
TAB_DRIFT = "Drift"
TAB_HEALTH = "Model health"
#: Columns of the recorded reference scores.
_REFERENCE_SCORE_COLUMNS = [schema.TIMESTAMP, schema.ASSET, SCORE]
#: Inference-log columns that identify a logged request (their presence means "inference-log window").
_LOG_MARKER = "request_id"
_LOGGED_AT = "logged_at"
_LOG_EXTRAS = frozenset(
    {"request_id", "logged_at", "source", "threshold", "row", "rules", "top_sensors", "full_history", "date"}
)
_SUFFIXES = (".parquet", ".csv", ".csv.gz")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_HASH_CHARS = 8
_READ_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MonitoringPaths:
    """Where the monitor stage keeps its files (fixed layout, see docs/ARCHITECTURE.md)."""

    root: Path
    workspace: Path
    state: Path
    lock: Path
    reports: Path
    reference_scores: Path
    reference: Path

    @classmethod
    def of(cls, paths: ProjectPaths) -> MonitoringPaths:
        return cls(
            root=paths.monitoring,
            workspace=paths.monitoring / "workspace",
            state=paths.monitoring / "state.json",
            lock=paths.monitoring / ".state.lock",
            reports=paths.reports / "drift",
            reference_scores=paths.monitoring / "reference_scores.parquet",
            reference=paths.processed / "train.parquet",
        )


def load_state(path: Path) -> PolicyState:
    """The stored policy state; a fresh one when the file does not exist yet."""
    if not path.exists():
        return PolicyState()
    try:
        return PolicyState.model_validate_json(path.read_bytes())
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise DataError(
            f"{path}: unreadable monitoring state ({where}: {first['msg']}); fix or delete it"
        ) from None


def save_state(path: Path, state: PolicyState) -> None:
    """Replace the state file atomically (a crash leaves the old or the new state, never half)."""
    atomic_write_bytes(path, (state.model_dump_json(indent=2) + "\n").encode())


def _lock(mon: MonitoringPaths, timeout_s: float) -> FileLock:
    mon.root.mkdir(parents=True, exist_ok=True)
    return FileLock(mon.lock, timeout=timeout_s)


def _locked(mon: MonitoringPaths, timeout_s: float) -> FileLock:
    lock = _lock(mon, timeout_s)
    try:
        lock.acquire()
    except Timeout:
        raise UsageError(f"another monitor run holds {mon.lock}; try again when it finishes") from None
    return lock


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise UsageError(
        f"{path}: unsupported batch file (use a folder of .parquet files, or {', '.join(_SUFFIXES)})"
    )


def _read_table(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path) if _suffix(path) == ".parquet" else pd.read_csv(path)
    except PlantwatchError:
        raise
    except Exception as err:  # pandas/pyarrow raise many kinds on a corrupt file
        raise DataError(f"{path}: cannot read ({type(err).__name__})") from None


def batch_files(path: Path) -> list[Path]:
    """The file, or the visible .parquet files of a folder (an inference-log day partition)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise DataError(f"{path}: no .parquet files in this folder")
        return files
    if not path.is_file():
        raise UsageError(f"{path}: batch not found")
    _suffix(path)
    return [path]


def load_batch(path: Path, default_asset: str) -> pd.DataFrame:
    """A landed raw batch or an inference-log window as one canonical frame.

    Inference-log windows can hold the same reading more than once (a request re-sends history);
    the last scoring of each (asset, timestamp) is kept, so no reading is counted twice.
    """
    frames = [_read_table(f) for f in batch_files(path)]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if schema.TIMESTAMP not in frame:
        raise DataError(f"{path}: no {schema.TIMESTAMP!r} column")
    ts = pd.to_datetime(frame[schema.TIMESTAMP], errors="coerce", utc=True, format="ISO8601")
    if ts.isna().any():
        raise DataError(f"{path}: {int(ts.isna().sum())} unparseable timestamp(s)")
    frame[schema.TIMESTAMP] = ts.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")
    if schema.ASSET not in frame:
        frame[schema.ASSET] = default_asset
    frame[schema.ASSET] = frame[schema.ASSET].astype(str)
    if _LOG_MARKER in frame:
        order = [_LOGGED_AT] if _LOGGED_AT in frame else []
        frame = frame.sort_values(order, kind="stable") if order else frame
        before = len(frame)
        frame = frame.drop_duplicates([schema.ASSET, schema.TIMESTAMP], keep="last")
        if len(frame) < before:
            log.info("%s: %d re-scored readings counted once", path, before - len(frame))
    # Inference-log extras (rules, top_sensors, request ids ...) are not monitored; list-valued
    # columns would only slow validation down.
    keep = [c for c in frame.columns if c not in _LOG_EXTRAS]
    return frame[keep].sort_values([schema.ASSET, schema.TIMESTAMP], kind="stable").reset_index(drop=True)


def gx_validator(params: Params, paths: ProjectPaths, batch_id: str) -> Validator:
    """GX validation of a monitored batch with the project's suite (same code as ``plantwatch validate``).

    Quarantined rows, the validation report and the ledger line are recorded (source ``monitor``);
    the training input ``clean.parquet`` is never touched. A rejected batch is a ``DataError``: no
    drift decision is taken on data that breaks the contract.
    """

    def run(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
        from plantwatch.validation import record, validate_frame

        outcome = validate_frame(frame, params.data, params.validate_, batch_id=batch_id)
        record(outcome, paths, source="monitor", write_clean=False)
        if not outcome.accepted:
            raise DataError(outcome.one_line())
        return outcome.clean, outcome.summary()

    return run


def batch_id_for(path: Path) -> str:
    """``<name>-<sha256 prefix>``: readable, and the same content always gets the same id."""
    digest = hashlib.sha256()
    for f in batch_files(path):
        digest.update(f.name.encode())
        with f.open("rb") as fh:
            while chunk := fh.read(_READ_CHUNK):
                digest.update(chunk)
    name = path.name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    slug = _UNSAFE.sub("-", name).strip("-._") or "batch"
    return f"{slug}-{digest.hexdigest()[:_HASH_CHARS]}"


def load_reference(mon: MonitoringPaths) -> pd.DataFrame:
    """The training window (features stage output) plus the production model's scores, when recorded."""
    if not mon.reference.exists():
        raise DataError(f"{mon.reference}: reference not found (run the features stage first)")
    reference = pd.read_parquet(mon.reference)
    if mon.reference_scores.exists() and SCORE not in reference:
        scores = pd.read_parquet(mon.reference_scores)
        reference = reference.merge(scores, on=[schema.TIMESTAMP, schema.ASSET], how="left")
    return reference


# --------------------------------------------------------------------------------------------------
# Evidently workspace and dashboard
# --------------------------------------------------------------------------------------------------
def open_workspace(path: Path) -> Workspace:
    """The local Evidently workspace (created on first use)."""
    from evidently.ui.workspace import Workspace

    path.mkdir(parents=True, exist_ok=True)
    return Workspace(str(path))


def dashboard_panels(sensors: Sequence[str], cfg: MonitorConfig) -> list[tuple[str, DashboardPanelPlot]]:
    """(tab, panel) pairs: drift over time, alert/review rate against the budget, score quantiles, rows.

    Every series points at a metric of :func:`plantwatch.drift.build_report` by its type and labels.
    """
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import counter_panel, line_plot_panel

    def metric(name: str, legend: str, **labels: str) -> PanelMetric:
        return PanelMetric(legend=legend, metric=name, metric_labels=labels)

    def mean_of(column: str, legend: str) -> PanelMetric:
        return metric("MeanValue", legend, column=column)

    share = metric("DriftedColumnsCount", "share of drifted sensors", value_type="share")
    per_sensor = [metric("ValueDrift", s, column=s) for s in sensors]
    quantiles = [
        metric("QuantileValue", f"q{q:g}", column=SCORE, quantile=str(q)) for q in cfg.guard.quantiles
    ]
    return [
        (
            TAB_DRIFT,
            line_plot_panel(
                "Share of drifted sensors", [share], f"batch drifts at >= {cfg.drift_share:g}", size="half"
            ),
        ),
        (TAB_DRIFT, counter_panel("Drifted sensors, last batch", [share], size="half")),
        (
            TAB_DRIFT,
            line_plot_panel(
                "Per-sensor drift score",
                per_sensor,
                "effect size (normed Wasserstein unless overridden) vs the matched reference",
            ),
        ),
        (
            TAB_DRIFT,
            line_plot_panel(
                "Model score drift",
                [metric("ValueDrift", "score", column=SCORE)],
                f"{cfg.score.method}, threshold {cfg.score.threshold:g}",
                size="half",
            ),
        ),
        (
            TAB_HEALTH,
            line_plot_panel(
                "Alert rate vs budget",
                [
                    mean_of(ALERTS_PER_ASSET_DAY, "alerts per asset-day"),
                    mean_of(ALERT_BUDGET, "budget"),
                    mean_of(ALERT_LIMIT, "guard limit"),
                ],
                "alerts per asset-day; the guard rolls back above the limit",
                size="half",
            ),
        ),
        (
            TAB_HEALTH,
            line_plot_panel(
                "Review rate",
                [mean_of(REVIEWS_PER_ASSET_DAY, "reviews per asset-day")],
                "readings sent to review per asset-day",
                size="half",
            ),
        ),
        (
            TAB_HEALTH,
            line_plot_panel(
                "Score quantiles", quantiles, "model score per batch (higher = more anomalous)", size="half"
            ),
        ),
        (
            TAB_HEALTH,
            line_plot_panel(
                "Rows scored", [mean_of(ROWS_IN_BATCH, "rows")], "readings per batch", size="half"
            ),
        ),
    ]


def ensure_project(workspace: Workspace, sensors: Sequence[str], cfg: MonitorConfig) -> Project:
    """The project named ``cfg.project``: found by name, or created once with its dashboard."""
    found = list(workspace.search_project(cfg.project))
    if found:
        if len(found) > 1:
            log.warning("%d Evidently projects named %r; using the first", len(found), cfg.project)
        return found[0]
    project = workspace.create_project(
        cfg.project, description="plantwatch drift and model-health monitoring"
    )
    for tab, panel in dashboard_panels(sensors, cfg):
        project.dashboard.add_panel(panel, tab=tab)
    log.info("created Evidently project %r in %s", cfg.project, getattr(workspace, "path", "workspace"))
    return project


# --------------------------------------------------------------------------------------------------
# the monitor run
# --------------------------------------------------------------------------------------------------
@dataclass
class MonitorOutcome:
    """What one monitor run found, decided and did (``to_dict`` is the CLI's ``--json``)."""

    batch_id: str
    rows: int
    rows_checked: int
    result: DriftResult
    stats: BatchStats
    decision: PolicyDecision
    actions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    validation: dict[str, Any] | None = None
    report: str | None = None
    snapshot_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "rows": self.rows,
            "rows_checked": self.rows_checked,
            "validation": self.validation,
            **self.result.to_dict(),
            "stats": asdict(self.stats),
            "retrain": self.decision.retrain,
            "retrain_reason": self.decision.reason,
            "rollback": self.decision.rollback,
            "rollback_reason": self.decision.rollback_reason,
            "guard": self.decision.guard,
            "notes": self.decision.notes,
            "actions": self.actions,
            "errors": self.errors,
            "report": self.report,
            "snapshot_id": self.snapshot_id,
        }


def _run_action(name: str, action: Callable[[Any], str | None], arg: Any) -> tuple[str | None, str | None]:
    """(what it did, error) of one injected action; a failing action never loses the batch's state."""
    try:
        return action(arg), None
    except Exception as err:  # the action is someone else's code (Prefect, registry): report, don't crash
        log.error("%s failed: %s", name, err)
        return None, f"{name} failed: {type(err).__name__}: {err}"


def monitor_batch(
    batch: pd.DataFrame,
    *,
    params: Params,
    paths: ProjectPaths,
    batch_id: str,
    reference: pd.DataFrame | None = None,
    validate: Validator | None = None,
    retrain: RetrainAction | None = None,
    rollback: RollbackAction | None = None,
    workspace: Workspace | None = None,
    lock_timeout_s: float = 60.0,
) -> MonitorOutcome:
    """Validate, check drift, decide, store the snapshot/report/state and run the decided actions.

    ``retrain`` is called once when the policy triggers (its return value describes what it did);
    if it raises, the "in progress" flag is cleared again so the next drifted batch can retry.
    ``rollback`` is called when the post-promotion guard breaches. Without them the decision is
    only recorded. Everything under the state lock: two runs never interleave.
    """
    cfg = params.monitor
    mon = MonitoringPaths.of(paths)
    lock = _locked(mon, lock_timeout_s)
    try:
        state = load_state(mon.state)
        if state.has_seen(batch_id):
            raise UsageError(f"batch {batch_id} was already monitored (see {mon.state})")
        rows = len(batch)
        validation = None
        if validate is not None:
            batch, validation = validate(batch)
        ref = load_reference(mon) if reference is None else reference
        check = check_drift(
            ref,
            batch,
            params.data.sensor_names,
            cfg,
            interval_s=params.data.interval_s,
            alert_budget=params.train.alert_budget,
            episode_gap=params.train.episode_gap,
            batch_id=batch_id,
        )
        decision, new_state = decide(
            state, batch_id, check.result, check.stats, cfg, params.train.alert_budget
        )

        mon.reports.mkdir(parents=True, exist_ok=True)
        report = mon.reports / f"{batch_id}.html"
        check.snapshot.save_html(str(report))
        ws = workspace if workspace is not None else open_workspace(mon.workspace)
        project = ensure_project(ws, params.data.sensor_names, cfg)
        ref_run = ws.add_run(project.id, check.snapshot, include_data=False, name=batch_id)

        outcome = MonitorOutcome(
            batch_id=batch_id,
            rows=rows,
            rows_checked=len(batch),
            result=check.result,
            stats=check.stats,
            decision=decision,
            validation=validation,
            report=str(report),
            snapshot_id=str(ref_run.id),
        )
        if decision.retrain == "triggered" and decision.retrain_request is not None:
            if retrain is None:
                outcome.actions.append("retrain requested (recorded in monitoring state; no trigger wired)")
            else:
                did, error = _run_action("retrain trigger", retrain, decision.retrain_request)
                if error:
                    new_state = finish_retrain(new_state)
                    outcome.errors.append(error)
                else:
                    outcome.actions.append(did or "retrain requested")
        if decision.rollback:
            if rollback is None:
                outcome.actions.append(f"rollback recommended: {decision.rollback_reason}")
            else:
                did, error = _run_action("rollback", rollback, decision)
                if error:
                    outcome.errors.append(error)
                else:
                    if did is None:
                        outcome.actions.append(
                            f"rollback needed but no earlier production version exists: "
                            f"{decision.rollback_reason}"
                        )
                    else:
                        # The rolled-back-to version served before: no new guard for it (no ping-pong).
                        outcome.actions.append(f"rolled back to {did}")
                        new_state = new_state.model_copy(update={"production_version": did})
        save_state(mon.state, new_state)
        return outcome
    finally:
        lock.release()


# --------------------------------------------------------------------------------------------------
# promotion / retrain lifecycle hooks (called by the registry CLI, the flows, or sync_production)
# --------------------------------------------------------------------------------------------------
def reference_quantiles(scores: pd.Series, cfg: MonitorConfig) -> dict[str, float]:
    """The guard's reference: score quantiles of the promoted model on its reference rows."""
    clean = scores.dropna().astype(float)
    if clean.empty:
        raise DataError("no reference scores to take quantiles of")
    values = clean.quantile(cfg.guard.quantiles)
    return {quantile_key(q): float(v) for q, v in zip(cfg.guard.quantiles, values, strict=True)}


def record_promotion(
    paths: ProjectPaths,
    cfg: MonitorConfig,
    model_version: str,
    scored_reference: pd.DataFrame,
    lock_timeout_s: float = 60.0,
) -> PolicyState:
    """A model went to production: store its reference scores and start the post-promotion guard.

    ``scored_reference`` holds ``timestamp``, ``asset``, ``score`` of the new model on its reference
    (training-window) rows. Ends any retrain in progress and starts the drift evidence afresh.
    """
    missing = [c for c in _REFERENCE_SCORE_COLUMNS if c not in scored_reference]
    if missing:
        raise DataError(f"scored reference lacks column(s): {', '.join(missing)}")
    mon = MonitoringPaths.of(paths)
    lock = _locked(mon, lock_timeout_s)
    try:
        quantiles = reference_quantiles(scored_reference[SCORE], cfg)
        buffer = io.BytesIO()
        scored_reference[_REFERENCE_SCORE_COLUMNS].to_parquet(buffer, index=False)
        atomic_write_bytes(mon.reference_scores, buffer.getvalue())
        state = start_guard(load_state(mon.state), model_version, quantiles, cfg)
        save_state(mon.state, state)
        log.info("guard started for %s over the next %d batches", model_version, cfg.guard.batches)
        return state
    finally:
        lock.release()


def record_retrain_finished(paths: ProjectPaths, lock_timeout_s: float = 60.0) -> PolicyState:
    """A retrain ended without a promotion: clear the in-progress flag (the cooldown still holds)."""
    mon = MonitoringPaths.of(paths)
    lock = _locked(mon, lock_timeout_s)
    try:
        state = finish_retrain(load_state(mon.state))
        save_state(mon.state, state)
        return state
    finally:
        lock.release()


def production_changed(paths: ProjectPaths, production_tag: str | None) -> bool:
    """True when the registry serves a version the monitoring state has not been told about."""
    return (
        production_tag is not None
        and load_state(MonitoringPaths.of(paths).state).production_version != production_tag
    )


def scored_reference_for(bundle: Any, reference: pd.DataFrame) -> pd.DataFrame:
    """The reference rows scored by ``bundle`` (timestamp, asset, score) for :func:`record_promotion`."""
    from plantwatch.scoring import score_readings

    scored = score_readings(bundle, reference)
    out = reference[[schema.TIMESTAMP, schema.ASSET]].copy()
    out[SCORE] = scored[SCORE].to_numpy()
    return out


# --------------------------------------------------------------------------------------------------
# registry wiring shared by the CLI and the flows
# --------------------------------------------------------------------------------------------------
def sync_production(paths: ProjectPaths, params: Params, registry: Any) -> str | None:
    """Start the guard when the registry serves a version monitoring has not seen promoted yet.

    The guard's reference is the new model's own score distribution on its reference rows, so it
    is computed here once per promotion (scoring the training window), not trusted from elsewhere.
    Returns what it did, or ``None`` when production is unchanged.
    """
    tag = registry.production_tag()
    if not production_changed(paths, tag):
        return None
    tag, bundle = registry.load_production()
    reference = load_reference(MonitoringPaths.of(paths))
    scored = scored_reference_for(bundle, reference.drop(columns=[SCORE], errors="ignore"))
    record_promotion(paths, params.monitor, tag, scored)
    return f"production is {tag}: guard started for {params.monitor.guard.batches} batches"


def audit_retrain_request(registry: Any) -> RetrainAction:
    """Retrain action of the CLI: record the request in the registry's audit log (flows trigger Prefect)."""

    def act(request: RetrainRequest) -> str:
        registry.audit(
            "retrain_requested",
            reason=request.reason,
            batch_id=request.batch_id,
            drift_share=request.drift_share,
            drifted_sensors=request.drifted_sensors,
        )
        return "retrain requested (recorded in monitoring state and registry audit log)"

    return act


def registry_rollback(registry: Any) -> RollbackAction:
    """Rollback action: move production back to the previous version; returns the version now serving."""

    def act(decision: PolicyDecision) -> str | None:
        """``None`` when there is no earlier production version: nothing safer to go back to, so the
        breach is reported to a person instead of failing the monitoring run."""
        why = f"monitoring guard on batch {decision.batch_id}: {decision.rollback_reason}"
        try:
            state = registry.rollback(reason=why)
        except RegistryError as err:
            log.warning("guard breach on %s but cannot roll back: %s", decision.batch_id, err)
            return None
        return state.current

    return act
