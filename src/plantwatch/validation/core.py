"""Validation core: a canonical frame + the data contract -> accepted rows, quarantined rows, verdict.

:func:`validate_frame` is what both ``plantwatch validate`` and the monitoring loop call. It runs
the generated GX suite once over the whole batch and then sorts the outcome:

* a failed ``batch``-level expectation (schema, volume, null share, gaps) rejects the batch: every
  row is quarantined, ``status="rejected"``;
* otherwise the rows GX lists as unexpected for ``row``-level expectations are quarantined with
  their reasons and the rest is accepted (``status="accepted"``, even when some rows were taken out);
* ``warning``-level failures (stuck sensors) are reported, their rows kept.

Two invariants are checked on every call, never assumed: GX evaluated exactly as many expectations
as the suite holds (GX reports "success" after evaluating none, e.g. when a suite failed to load),
and ``rows_in == rows_clean + rows_quarantined``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from plantwatch import schema
from plantwatch.config import DataConfig, ValidateConfig
from plantwatch.errors import PlantwatchError
from plantwatch.ingest import TYPE_ERRORS, coerce_sensors
from plantwatch.validation.expectations import stuck_mask
from plantwatch.validation.gx_runner import GXRunner
from plantwatch.validation.suite import (
    REASON_COLUMN_TYPE,
    REASON_MISSING_COLUMN,
    REASON_ROW_COUNT,
    REASON_STUCK,
    REASON_TOO_MANY_GAPS,
    REASON_TOO_MANY_NULLS,
    REASON_WRONG_TYPE,
    SuitePlan,
    build_suite,
    meta_of,
)

log = logging.getLogger(__name__)

Status = Literal["accepted", "rejected"]
#: Column added to quarantined rows: the batch they came from.
REASON = "reason"
#: Separator between several reasons of one row.
REASON_SEP = "; "
#: Reason recorded when row-level quarantine leaves fewer clean rows than ``validate.min_rows``.
REASON_TOO_FEW_CLEAN = "too few valid rows"
_BATCH_ID_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ValidationIntegrityError(PlantwatchError):
    """GX or the bookkeeping broke an invariant: the verdict cannot be trusted."""

    exit_code = 1


@dataclass(frozen=True)
class ExpectationReport:
    """One expectation's verdict, readable without GX."""

    expectation: str
    target: str
    level: str
    reason: str
    success: bool
    unexpected_count: int | None
    observed: Any
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "expectation": self.expectation,
            "target": self.target,
            "level": self.level,
            "reason": self.reason,
            "success": self.success,
            "unexpected_count": self.unexpected_count,
            "observed": self.observed,
            "error": self.error,
        }


@dataclass(frozen=True)
class ValidationOutcome:
    """Everything one validation run decided.

    ``clean`` holds the accepted rows in canonical form (input columns minus the type-error marker;
    empty when rejected). ``quarantined`` holds the other rows with ``row_id`` (position in the
    input batch), ``batch_id`` and ``reason`` (one or more reasons joined by ``"; "``).
    """

    batch_id: str
    status: Status
    clean: pd.DataFrame
    quarantined: pd.DataFrame
    rows_in: int
    reasons: dict[str, int]
    batch_failures: list[str]
    warnings: dict[str, int]
    suite_name: str
    suite_version: str
    expectations_evaluated: int
    expectations: list[ExpectationReport] = field(default_factory=list)
    gx_result: Any = field(default=None, repr=False, compare=False)

    @property
    def rows_clean(self) -> int:
        return len(self.clean)

    @property
    def rows_quarantined(self) -> int:
        return len(self.quarantined)

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (the ledger line minus time/source; the report adds per-expectation detail)."""
        return {
            "batch_id": self.batch_id,
            "status": self.status,
            "rows_in": self.rows_in,
            "rows_clean": self.rows_clean,
            "rows_quarantined": self.rows_quarantined,
            "reasons": dict(self.reasons),
            "batch_failures": list(self.batch_failures),
            "warnings": dict(self.warnings),
            "suite_name": self.suite_name,
            "suite_version": self.suite_version,
            "expectations_evaluated": self.expectations_evaluated,
        }

    def one_line(self) -> str:
        """A readable single line for the CLI."""
        if self.status == "rejected":
            return (
                f"batch {self.batch_id} rejected: {REASON_SEP.join(self.batch_failures)} "
                f"({self.rows_quarantined} rows quarantined)"
            )
        return (
            f"batch {self.batch_id} accepted: {self.rows_clean} clean, {self.rows_quarantined} quarantined "
            f"of {self.rows_in} rows"
        )


# ---------------------------------------------------------------------------------------------


@functools.cache
def default_runner() -> GXRunner:
    """One in-memory GX context per process, reused across calls (set-up costs more than a small batch)."""
    return GXRunner.ephemeral()


def content_batch_id(frame: pd.DataFrame) -> str:
    """A batch id derived from the content: validating the same data twice gives the same id."""
    digest = hashlib.sha256()
    digest.update("|".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return f"batch-{digest.hexdigest()[:12]}"


def prepare_frame(frame: pd.DataFrame, data: DataConfig) -> pd.DataFrame:
    """What the suite runs on: the input plus ``row_id`` (its position, as the named index) and the
    type-error marker.

    Nothing is repaired: non-numeric sensor values are coerced *and recorded* (so a frame that did
    not go through ingest, e.g. a monitoring batch, gets the same wrong-type treatment). Only the
    representation is made canonical where no value changes: a ``string``/``category`` asset column
    becomes object, aware or non-ns timestamps become naive-UTC ``datetime64[ns]``.
    """
    out = frame.reset_index(drop=True)
    if schema.ROW_ID in out:  # a stale id from an earlier run would clash with the index name
        out = out.drop(columns=[schema.ROW_ID])
    out = coerce_sensors(out, [s for s in data.sensor_names if s in out.columns])
    if schema.ASSET in out and not pd.api.types.is_object_dtype(out[schema.ASSET]):
        if isinstance(out[schema.ASSET].dtype, pd.CategoricalDtype | pd.StringDtype):
            col = out[schema.ASSET]
            out[schema.ASSET] = col.astype(object).where(col.notna(), None)
    if schema.TIMESTAMP in out:  # same instants, canonical representation: naive UTC, ns
        ts = out[schema.TIMESTAMP]
        if isinstance(ts.dtype, pd.DatetimeTZDtype):
            ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
        if pd.api.types.is_datetime64_dtype(ts):
            out[schema.TIMESTAMP] = ts.astype("datetime64[ns]")
    out.index = pd.RangeIndex(len(out), name=schema.ROW_ID)
    return out


def _target(cfg: Any) -> str:
    kwargs = cfg.kwargs
    if "column" in kwargs:
        return str(kwargs["column"])
    if "column_list" in kwargs:
        return ",".join(kwargs["column_list"])
    return "table"


def _touches(cfg: Any, columns: set[str]) -> bool:
    """Whether an expectation reads one of ``columns`` (then its error is a consequence, not news)."""
    used = {cfg.kwargs.get("column"), *cfg.kwargs.get("column_list", [])}
    return bool(used & columns)


def _pct(x: float) -> str:
    return f"{x:.2f}%"


def _exception_message(result: Any) -> str | None:
    """The first error GX caught for this expectation (it nests them per metric), else None."""
    info = result.exception_info or {}
    candidates = [info, *(v for v in info.values() if isinstance(v, dict))]
    for entry in candidates:
        if entry.get("raised_exception"):
            return str(entry.get("exception_message") or "unknown error").splitlines()[0]
    return None


def _bad_columns(result: Any) -> list[str]:
    """Columns a failed schema expectation complains about (missing or wrong dtype)."""
    if result.success:
        return []
    details = (result.result or {}).get("details") or {}
    mismatched = details.get("mismatched") or {}
    return [*mismatched.get("missing", []), *(k for k in mismatched if k not in ("missing", "unexpected"))]


def _missing_columns(result: Any) -> list[str]:
    details = (result.result or {}).get("details") or {}
    return list((details.get("mismatched") or {}).get("missing") or [])


def _describe_batch_failure(
    reason: str, result: Any, validate: ValidateConfig, missing: set[str], detail: str = ""
) -> str | None:
    """Readable text for a failed batch-level expectation (None: nothing new to say)."""
    res = result.result or {}
    error = _exception_message(result)
    if error is not None:
        return f"{reason} (could not be evaluated: {error})"
    if reason == REASON_ROW_COUNT:
        return (
            f"{reason}: {res.get('observed_value')} rows, expected {validate.min_rows}..{validate.max_rows}"
        )
    if reason == REASON_MISSING_COLUMN:
        return f"{reason}(s): {', '.join(_missing_columns(result))}"
    if reason == REASON_COLUMN_TYPE:
        mismatched = ((res.get("details") or {}).get("mismatched")) or {}
        wrong = [
            f"{col} is {m['observed']} (expected {m['expected']})"
            for col, m in mismatched.items()
            if col not in missing
        ]
        return f"{reason}: {', '.join(wrong)}" if wrong else None
    if reason.startswith(REASON_TOO_MANY_NULLS):
        share = _pct((1.0 - float(res.get("observed_value") or 0.0)) * 100)
        return f"{reason} ({share} > {_pct(validate.max_null_fraction * 100)}{detail})"
    if reason == REASON_TOO_MANY_GAPS:
        limit = (1.0 - validate.gap_mostly) * 100
        return f"{reason} ({_pct(res.get('unexpected_percent', 0.0))} of readings > {_pct(limit)})"
    return reason


def _row_ids(result: Any) -> np.ndarray:
    """Failing rows' ids from a COMPLETE result (``[{"row_id": [...]}]`` with exclude_unexpected_values)."""
    index_list = (result.result or {}).get("unexpected_index_list") or []
    ids = [rid for entry in index_list for rid in entry[schema.ROW_ID]]
    return np.asarray(ids, dtype="int64")


def _wrong_type_reasons(prepared: pd.DataFrame, row_ids: np.ndarray) -> pd.DataFrame:
    """One reason per (row, offending column): "wrong type: pressure"."""
    markers = pd.Series(prepared[TYPE_ERRORS].to_numpy()[row_ids], index=row_ids, dtype=object)
    parts = markers.astype(str).str.split(REASON_SEP).explode()
    columns = parts.str.split("=", n=1).str[0]
    return pd.DataFrame(
        {schema.ROW_ID: columns.index.to_numpy(dtype="int64"), REASON: REASON_WRONG_TYPE + ": " + columns}
    ).reset_index(drop=True)


def _stuck_reasons(
    prepared: pd.DataFrame, row_ids: np.ndarray, data: DataConfig, validate: ValidateConfig
) -> pd.DataFrame:
    """Which sensor(s) are stuck on the rows GX flagged: "stuck sensor: m07" per (row, sensor).

    GX runs one expectation over all sensors; the breakdown reuses the very function its metric
    runs (``stuck_mask``), restricted to the rows GX reported.
    """
    sensors = [s for s in data.sensor_names if s in prepared]
    mask = stuck_mask(prepared, schema.ASSET, sensors, validate.stuck_run_length).iloc[row_ids]
    rows, cols = np.nonzero(mask.to_numpy())
    return pd.DataFrame(
        {
            schema.ROW_ID: row_ids[rows].astype("int64"),
            REASON: [f"{REASON_STUCK}: {sensors[c]}" for c in cols],
        }
    )


def _join_reasons(row_reasons: pd.DataFrame) -> pd.Series:
    """row_id -> its distinct reasons joined by ``REASON_SEP`` (suite order), sorted by row_id.

    Vectorised per distinct reason (there are few), not per row: a rejected batch of 1M rows costs
    a handful of array operations.
    """
    ids = np.unique(row_reasons[schema.ROW_ID].to_numpy())
    text = pd.Series("", index=ids, dtype=object)
    for reason, rows in row_reasons.groupby(REASON, sort=False)[schema.ROW_ID]:
        where = np.unique(rows.to_numpy())
        current = text.loc[where]
        text.loc[where] = np.where(current == "", reason, current + REASON_SEP + str(reason))
    return text


def _not_numbers_detail(column: str, prepared: pd.DataFrame) -> str:
    """Say so when nulls are partly values that were not numbers (a text column, decimal commas)."""
    if column not in prepared or len(prepared) == 0:
        return ""
    marker = prepared[TYPE_ERRORS].astype(str)
    share = marker.str.contains(f"(?:^|{REASON_SEP}){re.escape(column)}=", regex=True).mean()
    return f"; {_pct(share * 100)} of values are not numbers" if share > 0 else ""


def validate_frame(
    frame: pd.DataFrame,
    data: DataConfig,
    validate: ValidateConfig,
    *,
    runner: GXRunner | None = None,
    plan: SuitePlan | None = None,
    batch_id: str | None = None,
) -> ValidationOutcome:
    """Validate one batch (canonical frame) against the contract; never raises on bad *data*.

    ``runner`` defaults to an in-memory GX context; pass ``GXRunner.for_project(...)`` to store the
    suite in ``expectations/``, keep GX results and build Data Docs. ``plan`` defaults to the suite
    generated from ``data`` + ``validate``. ``batch_id`` defaults to a hash of the content.
    Raises ``ValidationIntegrityError`` when GX evaluated a different number of expectations than
    the suite holds, or when rows would be lost or double-counted.
    """
    plan = plan or build_suite(data, validate)
    runner = runner or default_runner()
    batch_id = batch_id or content_batch_id(frame)
    if not _BATCH_ID_OK.match(batch_id):
        raise ValidationIntegrityError(f"unusable batch id {batch_id!r} (letters, digits, . _ - only)")
    prepared = prepare_frame(frame, data)
    gx_result = runner.validate(prepared, plan, run_name=batch_id)

    evaluated = int(gx_result.statistics.get("evaluated_expectations", 0))
    if evaluated != plan.size or len(gx_result.results) != plan.size:
        raise ValidationIntegrityError(
            f"GX evaluated {evaluated} expectations ({len(gx_result.results)} results) "
            f"but suite {plan.name} has {plan.size}: refusing to trust the verdict"
        )

    # Columns that are missing or of the wrong dtype are reported once; the failures or errors they
    # cause in other expectations are consequences, not news.
    broken_columns = {
        col
        for res in gx_result.results
        if meta_of(res.expectation_config).get("reason") in (REASON_MISSING_COLUMN, REASON_COLUMN_TYPE)
        for col in _bad_columns(res)
    }
    missing_columns = {
        col
        for res in gx_result.results
        if meta_of(res.expectation_config).get("reason") == REASON_MISSING_COLUMN
        for col in _missing_columns(res)
    }
    reports: list[ExpectationReport] = []
    batch_failures: list[str] = []
    row_parts: list[pd.DataFrame] = []
    warnings: dict[str, int] = {}
    for res in gx_result.results:
        cfg = res.expectation_config
        if cfg is None:
            raise ValidationIntegrityError("GX returned a result without its expectation")
        tag = meta_of(cfg)
        level, reason = tag.get("level", "batch"), tag.get("reason", cfg.type)
        error = _exception_message(res)
        unexpected = (res.result or {}).get("unexpected_count")
        reports.append(
            ExpectationReport(
                expectation=cfg.type,
                target=_target(cfg),
                level=level,
                reason=reason,
                success=bool(res.success),
                unexpected_count=None if unexpected is None else int(unexpected),
                observed=(res.result or {}).get("observed_value"),
                error=error,
            )
        )
        if res.success:
            continue
        if level == "batch" or error is not None:
            if _touches(cfg, broken_columns) or (not len(prepared) and reason != REASON_ROW_COUNT):
                continue  # a consequence of a broken column / of an empty batch, reported once
            detail = (
                _not_numbers_detail(_target(cfg), prepared)
                if reason.startswith(REASON_TOO_MANY_NULLS)
                else ""
            )
            line = _describe_batch_failure(reason, res, validate, missing_columns, detail)
            if line is not None:
                batch_failures.append(line)
            continue
        ids = _row_ids(res)
        if reason == REASON_STUCK:
            parts = _stuck_reasons(prepared, ids, data, validate)
            if level == "warning":
                counts = parts[REASON].value_counts()
                warnings.update({str(k): int(counts[k]) for k in sorted(counts.index)})
                continue
            row_parts.append(parts)
        elif level == "warning":
            warnings[reason] = len(ids)
        elif reason == REASON_WRONG_TYPE:
            row_parts.append(_wrong_type_reasons(prepared, ids))
        else:
            row_parts.append(pd.DataFrame({schema.ROW_ID: ids, REASON: reason}))

    row_reasons = (
        pd.concat(row_parts, ignore_index=True)
        if row_parts
        else pd.DataFrame({schema.ROW_ID: np.empty(0, "int64"), REASON: np.empty(0, object)})
    )
    clean_mask = np.ones(len(prepared), dtype=bool)
    clean_mask[row_reasons[schema.ROW_ID].to_numpy()] = False
    if not batch_failures and int(clean_mask.sum()) < validate.min_rows:
        batch_failures.append(f"{REASON_TOO_FEW_CLEAN}: {int(clean_mask.sum())} < {validate.min_rows}")
    if batch_failures:
        status: Status = "rejected"
        everyone = pd.DataFrame({schema.ROW_ID: np.arange(len(prepared), dtype="int64")})
        extra = [everyone.assign(**{REASON: f"batch rejected: {failure}"}) for failure in batch_failures]
        row_reasons = pd.concat([row_reasons, *extra], ignore_index=True)
        clean_mask[:] = False
    else:
        status = "accepted"

    row_reasons = row_reasons.drop_duplicates()
    reasons = {str(k): int(v) for k, v in row_reasons[REASON].value_counts(sort=False).items()}
    joined = _join_reasons(row_reasons)
    quarantined = prepared.iloc[joined.index.to_numpy()].reset_index()  # row_id becomes a column
    quarantined[schema.BATCH_ID] = batch_id
    quarantined[REASON] = joined.to_numpy()
    clean = prepared.loc[clean_mask].drop(columns=[TYPE_ERRORS]).reset_index(drop=True)

    if len(prepared) != len(clean) + len(quarantined):
        raise ValidationIntegrityError(
            f"row bookkeeping broken for {batch_id}: {len(prepared)} in != "
            f"{len(clean)} clean + {len(quarantined)} quarantined"
        )
    outcome = ValidationOutcome(
        batch_id=batch_id,
        status=status,
        clean=clean,
        quarantined=quarantined,
        rows_in=len(prepared),
        reasons=reasons,
        batch_failures=batch_failures,
        warnings=warnings,
        suite_name=plan.name,
        suite_version=plan.version,
        expectations_evaluated=evaluated,
        expectations=reports,
        gx_result=gx_result,
    )
    log.debug("%s", outcome.one_line())
    return outcome
