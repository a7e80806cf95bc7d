"""The raw-telemetry expectation suite, generated from the ``data:`` and ``validate:`` blocks.

The suite is code, not hand-edited JSON: :func:`build_suite` turns the data contract into GX
expectations, and ``plantwatch validate`` writes it to ``expectations/<suite_name>.json`` through
the GX expectation store (``add_or_update``, so IDs stay stable and re-running changes nothing).
The committed JSON is therefore a reviewable *rendering* of params, and its ``suite_version``
(a hash of everything that decides pass/fail) is recorded in every ledger line.

Each expectation carries ``meta.plantwatch`` = {level, reason}:

* ``batch``: schema, volume, null share, sampling gaps. Failure rejects the whole batch.
* ``row``: the failing rows (by ``row_id``) are quarantined with ``reason``; the batch goes on.
* ``warning``: failing rows are reported and kept (stuck sensors, unless ``validate.quarantine_stuck``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.expectations.expectation import Expectation
from great_expectations.expectations.metadata_types import FailureSeverity

from plantwatch import schema
from plantwatch.config import DataConfig, ValidateConfig
from plantwatch.ingest import TYPE_ERRORS
from plantwatch.validation.expectations import (
    ExpectColumnDtypesToBe,
    ExpectReadingKeysToBeUnique,
    ExpectSamplingStepsToBeAtMost,
    ExpectSensorsToNotBeStuck,
    ExpectTimestampsToNotGoBackwardsPerAsset,
)

Level = Literal["batch", "row", "warning"]
META_KEY = "plantwatch"

#: Column dtypes the canonical frame must have (pandas dtype names, checked by expect_column_type_to_be).
TIMESTAMP_DTYPE = "datetime64[ns]"
ASSET_DTYPE = "object"
SENSOR_DTYPE = "float64"

# Reasons (quarantine ``reason`` column, ledger counts). Per-column ones are "<reason>: <column>".
REASON_NULL_TIMESTAMP = "null timestamp"
REASON_NULL_ASSET = "null asset"
REASON_DUPLICATE = "duplicate key"
REASON_OUT_OF_ORDER = "out of order"
REASON_OUT_OF_RANGE = "out of range"
REASON_WRONG_TYPE = "wrong type"
REASON_STUCK = "stuck sensor"
REASON_MISSING_COLUMN = "missing column"
REASON_COLUMN_TYPE = "wrong column type"
REASON_ROW_COUNT = "row count out of bounds"
REASON_TOO_MANY_NULLS = "too many nulls"
REASON_TOO_MANY_GAPS = "too many sampling gaps"


@dataclass(frozen=True)
class SuitePlan:
    """A generated suite plus the identity that goes into ledgers and reports."""

    suite: gx.ExpectationSuite
    version: str

    @property
    def name(self) -> str:
        return self.suite.name

    @property
    def size(self) -> int:
        return len(self.suite.expectations)


def _tag(exp: Expectation, level: Level, reason: str) -> Expectation:
    exp.meta = {META_KEY: {"level": level, "reason": reason}}
    if level == "warning":
        exp.severity = FailureSeverity.WARNING
    return exp


def required_dtypes(data: DataConfig) -> dict[str, str]:
    """Canonical columns every batch must have, with their pandas dtypes."""
    return {
        schema.TIMESTAMP: TIMESTAMP_DTYPE,
        schema.ASSET: ASSET_DTYPE,
        **{s: SENSOR_DTYPE for s in data.sensor_names},
    }


def build_expectations(data: DataConfig, validate: ValidateConfig) -> list[Expectation]:
    """The contract as GX expectations, in a fixed order (pure; no GX context needed).

    Schema checks are one expectation each for the whole column set (GX's fixed cost per
    expectation dominates on wide data); value checks are per sensor where the verdict is per
    sensor (limits, null share) so Data Docs and reasons name the sensor.
    """
    ts, asset, sensors = schema.TIMESTAMP, schema.ASSET, data.sensor_names
    key = [asset, ts]
    dtypes = required_dtypes(data)
    exps: list[Expectation] = [
        _tag(
            gxe.ExpectTableRowCountToBeBetween(min_value=validate.min_rows, max_value=validate.max_rows),
            "batch",
            REASON_ROW_COUNT,
        ),
        _tag(
            gxe.ExpectTableColumnsToMatchSet(column_set=list(dtypes), exact_match=False),
            "batch",
            REASON_MISSING_COLUMN,
        ),
        _tag(ExpectColumnDtypesToBe(dtypes=dtypes), "batch", REASON_COLUMN_TYPE),
    ]
    min_non_null = round(1.0 - validate.max_null_fraction, 12)
    for col in sensors:
        exps.append(
            _tag(
                gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(column=col, min_value=min_non_null),
                "batch",
                f"{REASON_TOO_MANY_NULLS}: {col}",
            )
        )
    exps.append(
        _tag(
            ExpectSamplingStepsToBeAtMost(
                column_list=key,
                max_step_s=validate.max_gap_factor * data.interval_s,
                mostly=validate.gap_mostly,
            ),
            "batch",
            REASON_TOO_MANY_GAPS,
        )
    )
    exps += [
        _tag(gxe.ExpectColumnValuesToNotBeNull(column=ts), "row", REASON_NULL_TIMESTAMP),
        _tag(gxe.ExpectColumnValuesToNotBeNull(column=asset), "row", REASON_NULL_ASSET),
        _tag(ExpectReadingKeysToBeUnique(column_list=key), "row", REASON_DUPLICATE),
        _tag(ExpectTimestampsToNotGoBackwardsPerAsset(column_list=key), "row", REASON_OUT_OF_ORDER),
        # Non-numbers were coerced to NaN and recorded in TYPE_ERRORS (a range check skips NaN):
        # a non-null marker is the defect.
        _tag(gxe.ExpectColumnValuesToBeNull(column=TYPE_ERRORS), "row", REASON_WRONG_TYPE),
    ]
    for col, spec in data.sensors.items():
        if spec.min is None and spec.max is None:
            continue
        exps.append(
            _tag(
                gxe.ExpectColumnValuesToBeBetween(column=col, min_value=spec.min, max_value=spec.max),
                "row",
                f"{REASON_OUT_OF_RANGE}: {col}",
            )
        )
    exps.append(
        _tag(
            ExpectSensorsToNotBeStuck(
                column_list=[asset, *sensors], max_run_length=validate.stuck_run_length
            ),
            "row" if validate.quarantine_stuck else "warning",
            REASON_STUCK,
        )
    )
    return exps


def _identity(exp: Expectation) -> dict[str, Any]:
    cfg = exp.configuration
    return {"type": cfg.type, "kwargs": cfg.kwargs, "meta": cfg.meta, "severity": str(exp.severity.value)}


def expectation_key(exp: Expectation) -> str:
    """Identity of an expectation without its storage ID (type, kwargs, meta, severity)."""
    return json.dumps(_identity(exp), sort_keys=True, default=str)


def suite_version(expectations: list[Expectation]) -> str:
    """sha256 (first 16 hex) of everything that decides pass/fail: types, kwargs, levels, reasons."""
    payload = json.dumps([_identity(e) for e in expectations], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_suite(data: DataConfig, validate: ValidateConfig) -> SuitePlan:
    """A fresh (unsaved) GX suite for the contract, with its version in ``meta``."""
    exps = build_expectations(data, validate)
    version = suite_version(exps)
    suite = gx.ExpectationSuite(
        name=validate.suite_name,
        expectations=exps,
        meta={
            META_KEY: {
                "suite_version": version,
                "generated_by": "plantwatch.validation.suite.build_suite",
                "generated_from": "params: data + validate blocks (do not edit by hand)",
            }
        },
    )
    return SuitePlan(suite=suite, version=version)


def meta_of(exp_config: Any) -> dict[str, str]:
    """The ``meta.plantwatch`` tag of an expectation configuration ({} when absent)."""
    meta = getattr(exp_config, "meta", None) or {}
    return meta.get(META_KEY, {})
