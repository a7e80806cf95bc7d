"""Custom Great Expectations (GX Core 1.24) for time-series telemetry.

GX has no notion of "per asset, in time order", so the row-level checks that need it are custom
``MulticolumnMapExpectation`` s over ``[asset, <column>]``. Their pandas metrics are vectorised
(group codes + shifts; no per-row Python), and because they are map expectations GX reports the
failing rows' ``row_id`` through ``unexpected_index_column_names`` like any built-in one.

All three work on the frame *in the order given*: rows are grouped by asset, keeping their order
inside the asset (a stable sort), so an interleaved multi-asset batch is judged per asset.

Importing this module registers the expectations and metrics with GX; the suite JSON refers to them
by their snake_case type names, so it must be imported before a suite is loaded (the
``plantwatch.validation`` package does that).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import BatchExpectation, MulticolumnMapExpectation
from great_expectations.expectations.metrics.map_metric_provider import MulticolumnMapMetricProvider
from great_expectations.expectations.metrics.map_metric_provider.multicolumn_condition_partial import (
    multicolumn_condition_partial,
)

# ---------------------------------------------------------------------------------------------
# vectorised helpers (also used by tests to state the semantics directly)
# ---------------------------------------------------------------------------------------------


def _asset_order(keys: pd.Series) -> np.ndarray:
    """Positions that group rows by asset while keeping their order inside each asset."""
    codes, _ = pd.factorize(keys, use_na_sentinel=True)
    return np.argsort(codes, kind="stable")


def _scatter(values_in_order: np.ndarray, order: np.ndarray) -> np.ndarray:
    out = np.empty_like(values_in_order)
    out[order] = values_in_order
    return out


def _previous_in_asset(keys: pd.Series, values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the same asset's previous value (in frame order) and whether one exists."""
    order = _asset_order(keys)
    k = keys.to_numpy()[order]
    v = values.to_numpy()[order]
    has_prev = np.zeros(len(k), dtype=bool)
    has_prev[1:] = k[1:] == k[:-1]
    prev = np.empty_like(v)
    if len(v):
        prev[1:] = v[:-1]
        prev[0] = v[0]
    return _scatter(prev, order), _scatter(has_prev, order)


def step_seconds(keys: pd.Series, timestamps: pd.Series) -> np.ndarray:
    """Seconds since the same asset's previous reading (NaN for an asset's first reading)."""
    prev, has_prev = _previous_in_asset(keys, timestamps.astype("datetime64[ns]"))
    ts = timestamps.astype("datetime64[ns]").to_numpy()
    step = (ts - prev).astype("timedelta64[ns]").astype("int64").astype("float64") / 1e9
    step[~has_prev] = np.nan
    return step


def run_lengths(keys: pd.Series, values: pd.DataFrame | pd.Series) -> np.ndarray:
    """Length of the run of identical consecutive readings (same asset) each value belongs to.

    ``values``: one column or several (then the result is rows × columns). NaN never forms a run
    (a dropout is the null-share check's business, not a frozen sensor).
    """
    order = _asset_order(keys)
    k = keys.to_numpy()[order]
    one_column = isinstance(values, pd.Series)
    v = values.to_numpy(dtype="float64")[order].reshape(len(k), 1 if one_column else values.shape[1])
    same_asset = np.zeros(len(k), dtype=bool)
    same_asset[1:] = k[1:] == k[:-1]
    lengths = np.empty(v.shape, dtype="int64")
    for j in range(v.shape[1]):
        same = np.zeros(len(k), dtype=bool)
        same[1:] = same_asset[1:] & (v[1:, j] == v[:-1, j])  # NaN == NaN is False
        run_id = np.cumsum(~same)
        lengths[:, j] = np.bincount(run_id)[run_id]
    lengths = _scatter(lengths, order)
    return lengths[:, 0] if one_column else lengths


def stuck_mask(frame: pd.DataFrame, asset: str, sensors: list[str], max_run_length: int) -> pd.DataFrame:
    """Per row and sensor: is the reading part of a run of ``max_run_length`` or more? (rows × sensors)."""
    runs = run_lengths(frame[asset], frame[sensors])
    return pd.DataFrame(runs >= max_run_length, index=frame.index, columns=sensors)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


class ReadingKeysFirstOccurrence(MulticolumnMapMetricProvider):
    """True where this (asset, timestamp) pair has not appeared on an earlier row."""

    condition_metric_name = "multicolumn_values.plantwatch_first_occurrence"

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list: pd.DataFrame, **kwargs: Any) -> pd.Series:
        return ~column_list.duplicated(keep="first")


class TimestampsNotBackwards(MulticolumnMapMetricProvider):
    """True where the timestamp is not earlier than the same asset's previous reading."""

    condition_metric_name = "multicolumn_values.plantwatch_not_backwards"

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list: pd.DataFrame, **kwargs: Any) -> pd.Series:
        keys, ts = column_list.iloc[:, 0], column_list.iloc[:, 1]
        step = step_seconds(keys, ts)
        return pd.Series(~(step < 0), index=column_list.index)


class SamplingStepAtMost(MulticolumnMapMetricProvider):
    """True where the time since the same asset's previous reading is at most ``max_step_s``."""

    condition_metric_name = "multicolumn_values.plantwatch_step_at_most"
    condition_value_keys = ("max_step_s",)

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list: pd.DataFrame, max_step_s: float, **kwargs: Any) -> pd.Series:
        keys, ts = column_list.iloc[:, 0], column_list.iloc[:, 1]
        step = step_seconds(keys, ts)
        return pd.Series(~(step > max_step_s), index=column_list.index)


class SensorsNotStuck(MulticolumnMapMetricProvider):
    """``[asset, sensor, ...]``: True where no sensor of the row is in a run of ``max_run_length``+."""

    condition_metric_name = "multicolumn_values.plantwatch_not_stuck"
    condition_value_keys = ("max_run_length",)

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list: pd.DataFrame, max_run_length: int, **kwargs: Any) -> pd.Series:
        keys, values = column_list.iloc[:, 0], column_list.iloc[:, 1:]
        runs = run_lengths(keys, values)
        return pd.Series((runs < max_run_length).all(axis=1), index=column_list.index)


# ---------------------------------------------------------------------------------------------
# expectations
# ---------------------------------------------------------------------------------------------

_IgnoreRowIf = Literal["all_values_are_missing", "any_value_is_missing", "never"]


class ExpectReadingKeysToBeUnique(MulticolumnMapExpectation):
    """Each ``[asset, timestamp]`` appears once; every repeat after the first is unexpected.

    Unlike ``expect_compound_columns_to_be_unique`` (which flags every copy), the first reading is
    kept: a re-delivered row should cost the repeat, not the original. Rows with a null key are left
    to the not-null expectations.
    """

    ignore_row_if: _IgnoreRowIf = "any_value_is_missing"
    map_metric: ClassVar[str] = "multicolumn_values.plantwatch_first_occurrence"
    success_keys: ClassVar[tuple[str, ...]] = ("column_list", "ignore_row_if", "mostly")
    args_keys: ClassVar[tuple[str, ...]] = ("column_list",)


class ExpectTimestampsToNotGoBackwardsPerAsset(MulticolumnMapExpectation):
    """``[asset, timestamp]``: a reading earlier than its asset's previous reading is unexpected.

    Equal timestamps are the uniqueness check's business, so each defect gets exactly one reason.
    """

    ignore_row_if: _IgnoreRowIf = "any_value_is_missing"
    map_metric: ClassVar[str] = "multicolumn_values.plantwatch_not_backwards"
    success_keys: ClassVar[tuple[str, ...]] = ("column_list", "ignore_row_if", "mostly")
    args_keys: ClassVar[tuple[str, ...]] = ("column_list",)


class ExpectSamplingStepsToBeAtMost(MulticolumnMapExpectation):
    """``[asset, timestamp]``: time since the asset's previous reading is at most ``max_step_s``.

    Meant with ``mostly``: an occasional gap is normal plant life, many of them mean a broken feed.
    """

    max_step_s: float
    ignore_row_if: _IgnoreRowIf = "any_value_is_missing"
    map_metric: ClassVar[str] = "multicolumn_values.plantwatch_step_at_most"
    success_keys: ClassVar[tuple[str, ...]] = ("column_list", "ignore_row_if", "mostly", "max_step_s")
    args_keys: ClassVar[tuple[str, ...]] = ("column_list", "max_step_s")


class ExpectSensorsToNotBeStuck(MulticolumnMapExpectation):
    """``[asset, sensor, ...]``: no sensor repeats one value ``max_run_length`` or more times in a row.

    A row is unexpected when any of its sensors is inside such a run (the whole frozen stretch, not
    just its tail). One expectation covers all sensors: GX's fixed cost per expectation would
    otherwise dominate on wide data (38 sensors in SMD); the per-sensor breakdown comes from
    :func:`stuck_mask`, the same code the metric runs.
    """

    max_run_length: int
    ignore_row_if: _IgnoreRowIf = "never"
    map_metric: ClassVar[str] = "multicolumn_values.plantwatch_not_stuck"
    success_keys: ClassVar[tuple[str, ...]] = ("column_list", "ignore_row_if", "mostly", "max_run_length")
    args_keys: ClassVar[tuple[str, ...]] = ("column_list", "max_run_length")


class ExpectColumnDtypesToBe(BatchExpectation):
    """Every listed column has exactly the given pandas dtype (``{"timestamp": "datetime64[ns]"}``).

    One schema check for the whole contract instead of one ``expect_column_type_to_be`` per column.
    A listed column that is absent counts as a mismatch (observed ``None``).
    """

    dtypes: dict[str, str]
    metric_dependencies: ClassVar[tuple[str, ...]] = ("table.column_types",)
    success_keys: ClassVar[tuple[str, ...]] = ("dtypes",)
    args_keys: ClassVar[tuple[str, ...]] = ("dtypes",)

    def _validate(
        self,
        metrics: dict,
        runtime_configuration: dict | None = None,
        execution_engine: Any = None,
    ) -> dict[str, Any]:
        observed = {str(c["name"]): str(c["type"]) for c in metrics["table.column_types"]}
        mismatched = {
            col: {"expected": want, "observed": observed.get(col)}
            for col, want in self.dtypes.items()
            if observed.get(col) != want
        }
        result: dict[str, Any] = {"observed_value": {c: observed.get(c) for c in self.dtypes}}
        if mismatched:
            result["details"] = {"mismatched": mismatched}
        return {"success": not mismatched, "result": result}


CUSTOM_EXPECTATIONS: tuple[type, ...] = (
    ExpectReadingKeysToBeUnique,
    ExpectTimestampsToNotGoBackwardsPerAsset,
    ExpectSamplingStepsToBeAtMost,
    ExpectSensorsToNotBeStuck,
    ExpectColumnDtypesToBe,
)
