"""Feature engineering for the anomaly detector, and the time-ordered train/validation/holdout split.

``FeatureBuilder`` turns canonical telemetry rows into one numeric feature row per reading. Every
feature is *causal* (it only uses the current and earlier readings of the same asset) because the
service scores streaming windows: a feature that peeked at the future would look better offline than
it can ever be in production. Per-asset baselines (median / IQR) are learned in ``fit`` only, so the
same physical reading means "normal" on one pump and "hot" on another; assets never seen in training
fall back to the fleet-wide baseline.

``time_split`` cuts a canonical frame by time: the holdout is always the most recent period and no
row lands in two parts, so the holdout measures how the model does on the future it has not seen.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pandas._libs.window import aggregations as _window_kernels
from pandas.core.indexers.objects import FixedWindowIndexer
from pandas.core.window.common import zsqrt
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from plantwatch import schema
from plantwatch.config.train import FeaturesConfig, SplitConfig
from plantwatch.errors import DataError

log = logging.getLogger(__name__)

#: IQR of a standard normal distribution: dividing an IQR by it gives a sigma-like robust scale.
IQR_TO_SIGMA = 1.349
#: Ridge term of the cross-sensor regression, relative to the mean diagonal of the Gram matrix:
#: numerical stabiliser for collinear sensors, far too small to bias a well-posed fit.
_RIDGE = 1e-4
_TINY = 1e-12
#: Head rows (first readings of an asset) recomputed per vectorised batch in ``_rolling_stats``.
_HEAD_CHUNK = 4096
ROLLING_STATS = ("mean", "std", "min", "max", "slope")


# ---------------------------------------------------------------------------------------------------
# small vectorised helpers (sorted-by-asset arrays; ``starts`` marks the first row of each asset)
# ---------------------------------------------------------------------------------------------------


def _segment_starts(codes: np.ndarray) -> np.ndarray:
    """Boolean mask of rows that begin a new asset segment in an asset-sorted array."""
    starts = np.ones(len(codes), dtype=bool)
    if len(codes) > 1:
        starts[1:] = codes[1:] != codes[:-1]
    return starts


def _position_in_segment(starts: np.ndarray) -> np.ndarray:
    """0-based position of each row inside its asset segment."""
    idx = np.arange(len(starts))
    first = np.maximum.accumulate(np.where(starts, idx, 0))
    return idx - first


def _diff_in_segment(z: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Row-to-row change per asset; the first reading of an asset has no predecessor and gets 0."""
    d = np.zeros_like(z)
    d[1:] = z[1:] - z[:-1]
    d[starts] = 0.0
    return d


def _run_length(raw: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """How many consecutive earlier readings of the same asset had exactly the current value.

    0 when the value just changed (or is missing); k after k repeats. Vectorised with a running
    maximum of "last change" positions, so it is O(n) without a Python loop over rows.
    """
    n = raw.shape[0]
    same = np.zeros(raw.shape, dtype=bool)
    if n > 1:
        same[1:] = raw[1:] == raw[:-1]  # NaN != NaN, so missing values never count as stuck
    same[starts] = False
    idx = np.arange(n)[:, None]
    last_change = np.maximum.accumulate(np.where(same, 0, idx), axis=0)
    return (idx - last_change).astype(np.float64)


def _sensor_matrix(df: pd.DataFrame, sensors: list[str]) -> np.ndarray:
    """``df[sensors].to_numpy(dtype=float64, copy=True)``; column by column when every sensor column
    is already plain float64 (same values, without the sub-frame pandas builds first)."""
    columns = [df[s] for s in sensors] if df.columns.is_unique else None
    if columns is not None and all(isinstance(c.dtype, np.dtype) and c.dtype == np.float64 for c in columns):
        out = np.empty((len(df), len(sensors)), dtype=np.float64)
        for j, c in enumerate(columns):
            out[:, j] = c.to_numpy()
        return out
    return df[sensors].to_numpy(dtype=np.float64, copy=True)


def _epoch_ns(ts: pd.Series) -> np.ndarray:
    """Timestamps as int64 nanoseconds, as ``pd.to_datetime(ts)`` would give them (NaT -> int64 min)."""
    if ts.dtype == np.dtype("datetime64[ns]"):
        return ts.to_numpy().view(np.int64)
    return pd.to_datetime(ts).to_numpy(dtype="datetime64[ns]").astype(np.int64)


@dataclass(frozen=True)
class _SortedRows:
    """Readings of a frame in (asset, time) order: normalised ``z``, raw values, bookkeeping."""

    z: np.ndarray
    raw: np.ndarray
    missing: np.ndarray
    starts: np.ndarray
    pos: np.ndarray


def _segment_heads(pos: np.ndarray, window: int) -> np.ndarray:
    """Rows whose trailing window would reach back past the start of their asset's readings."""
    return np.flatnonzero((pos < window - 1) & (np.arange(len(pos)) > pos))


def _head_windows(z: np.ndarray, pos: np.ndarray, rows: np.ndarray, window: int) -> tuple[np.ndarray, ...]:
    """Readings of the (shortened) windows of ``rows``: values (r, w-1, s), validity, offsets."""
    ks = np.arange(window - 1)
    valid = ks[None, :] <= pos[rows][:, None]
    vals = z[np.clip(rows[:, None] - ks[None, :], 0, None)]
    return vals, valid[:, :, None], ks


@functools.lru_cache(maxsize=64)
def _window_bounds(n: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """pandas' own (start, end) bounds of a trailing fixed window (read-only, cached per size)."""
    start, end = FixedWindowIndexer(window_size=window).get_window_bounds(
        num_values=n, min_periods=1, center=False, closed=None, step=None
    )
    start.flags.writeable = False
    end.flags.writeable = False
    return start, end


def _rolling_columns(a: np.ndarray, window: int, stat: str) -> np.ndarray:
    """``pd.DataFrame(a).rolling(window, min_periods=1).<stat>()`` as an array (``std``: ddof=0).

    Calls pandas' own compiled window kernels column by column with pandas' own window bounds,
    i.e. exactly the arithmetic ``rolling`` runs (bit-identical results), without building a
    DataFrame, a Rolling object and a result frame per call: that bookkeeping cost about 1 ms per
    statistic and dominated scoring a single reading.
    """
    n = a.shape[0]
    out = np.empty(a.shape, dtype=np.float64)
    if n == 0:
        return out
    start, end = _window_bounds(n, int(window))
    cols = np.ascontiguousarray(a.T, dtype=np.float64)  # one row per column of ``a``
    inf = np.isinf(cols)
    if inf.any():  # as pandas does before its kernels
        cols = np.where(inf, np.nan, cols)
    kernel = _window_kernels.roll_var if stat == "std" else getattr(_window_kernels, f"roll_{stat}")
    kwargs = {"ddof": 0} if stat == "std" else {}
    with np.errstate(all="ignore"):
        for j in range(cols.shape[0]):
            out[:, j] = kernel(cols[j], start, end, 1, **kwargs)
    return zsqrt(out) if stat == "std" else out


def _rolling_mean(z: np.ndarray, pos: np.ndarray, window: int) -> np.ndarray:
    """Trailing per-asset mean over ``window`` readings (``min_periods=1``); see ``_rolling_stats``."""
    return _rolling_stats(z, pos, window, ("mean",))["mean"]


def _rolling_stats(
    z: np.ndarray, pos: np.ndarray, window: int, stats: Sequence[str], mean: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Trailing (causal) per-asset rolling mean/std/min/max/slope with ``min_periods=1``.

    ``z`` is sorted by (asset, time) and ``pos`` is each row's position inside its asset. One plain
    ``rolling`` over all rows is fast (no groupby sorting); it is exact except in the first
    ``window - 1`` rows of each asset, whose windows would reach into the previous asset. Those few
    "head" rows are recomputed from their own asset's readings only (vectorised over rows, a loop
    only over chunks of heads), so no asset's statistics ever see another asset's data.

    The slope is the least-squares slope per reading: cov(i, z) / var(i) over the window, where the
    variance of ``n`` consecutive integers is (n² - 1) / 12. ``mean``: the rolling mean, when the
    caller already has it.
    """
    out: dict[str, np.ndarray] = {}
    if mean is None and ("mean" in stats or "slope" in stats):
        mean = _rolling_columns(z, window, "mean")
    if "mean" in stats and mean is not None:
        out["mean"] = mean
    if "std" in stats:
        out["std"] = np.nan_to_num(_rolling_columns(z, window, "std"), nan=0.0)
    if "min" in stats:
        out["min"] = _rolling_columns(z, window, "min")
    if "max" in stats:
        out["max"] = _rolling_columns(z, window, "max")
    if "slope" in stats and mean is not None:
        idx = np.arange(len(z), dtype=np.float64)
        mean_iz = _rolling_columns(z * idx[:, None], window, "mean")
        n = np.minimum(idx + 1, window)[:, None]
        mean_i = idx[:, None] - (n - 1.0) / 2.0  # mean of the n consecutive indices ending here
        var_i = (n * n - 1.0) / 12.0
        with np.errstate(divide="ignore", invalid="ignore"):
            out["slope"] = np.where(var_i > 0, (mean_iz - mean_i * mean) / var_i, 0.0)
    heads = _segment_heads(pos, window)
    for lo in range(0, len(heads), _HEAD_CHUNK):
        _fix_heads(z, pos, heads[lo:lo + _HEAD_CHUNK], window, out)
    return out


def _fix_heads(
    z: np.ndarray, pos: np.ndarray, rows: np.ndarray, window: int, out: dict[str, np.ndarray]
) -> None:
    """Exact statistics of the shortened windows of ``rows`` (see ``_rolling_stats``)."""
    vals, valid, ks = _head_windows(z, pos, rows, window)
    cnt = (pos[rows] + 1).astype(np.float64)[:, None]
    mean = np.where(valid, vals, 0.0).sum(axis=1) / cnt
    if "mean" in out:
        out["mean"][rows] = mean
    if "std" in out:
        out["std"][rows] = np.sqrt(np.where(valid, (vals - mean[:, None, :]) ** 2, 0.0).sum(axis=1) / cnt)
    if "min" in out:
        out["min"][rows] = np.where(valid, vals, np.inf).min(axis=1)
    if "max" in out:
        out["max"][rows] = np.where(valid, vals, -np.inf).max(axis=1)
    if "slope" in out:
        t = -ks.astype(np.float64)[None, :, None]  # time of each reading relative to the current one
        t_mean = np.where(valid, t, 0.0).sum(axis=1, keepdims=True) / cnt[:, :, None]
        dt = np.where(valid, t - t_mean, 0.0)
        var_t = (dt**2).sum(axis=1)
        cov = (dt * (vals - mean[:, None, :])).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["slope"][rows] = np.where(var_t > 0, cov / var_t, 0.0)


def frame_sha256(df: pd.DataFrame) -> str:
    """sha256 over a frame's canonical bytes: column names, dtypes and values in row order.

    Independent of the index and of pandas' pickling format, so the same rows always give the same
    digest (the holdout's fingerprint in ``split.json`` and the model card).
    """
    h = hashlib.sha256()
    h.update(str(len(df)).encode())
    for col in df.columns:
        s = df[col]
        h.update(f"\x1f{col}\x1e{s.dtype}\x1e".encode())
        if pd.api.types.is_datetime64_any_dtype(s):
            h.update(s.to_numpy(dtype="datetime64[ns]").astype(np.int64).tobytes())
        elif pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            h.update(np.ascontiguousarray(s.to_numpy()).tobytes())
        else:
            h.update("\x00".join(s.astype(str).tolist()).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------
# FeatureBuilder
# ---------------------------------------------------------------------------------------------------


class FeatureBuilder(TransformerMixin, BaseEstimator):
    """Canonical telemetry rows -> engineered, per-asset-normalised, causal features.

    Per sensor ``s`` (all in units of the asset's robust scale, so assets are comparable):

    * ``s__dev``      (x - asset median) / asset scale — deviation from the asset's own baseline
    * ``s__roc``      change since the asset's previous reading (rate of change)
    * ``s__<stat>_<w>`` trailing rolling mean/std/min/max/slope of ``dev`` over ``w`` readings
    * ``s__resid``    cross-sensor residual: actual - prediction from the other sensors' current
                      and trailing-mean readings (robust linear regression learned in ``fit``), in
                      units of its own residual sigma; only with two or more sensors
    * ``s__resid_mean_<w>`` trailing mean of ``resid`` (a persistent broken relation, e.g. overheating)
    * ``s__stuck``    length of the current run of identical readings, divided by ``stuck_cap``
    * ``s__missing``  1 when the reading was missing (it is then imputed with the asset median)

    With ``raw=True`` the output is just the (imputed) sensor columns: the input the off-the-shelf
    baseline detector sees, behind the same interface so the bundle treats both candidates alike.

    Parameters mirror ``FeaturesConfig``; ``from_config`` builds one from the params block.
    """

    def __init__(
        self,
        sensors: Sequence[str] | None = None,
        windows: Sequence[int] = (5, 30, 120),
        stats: Sequence[str] = ROLLING_STATS,
        residuals: bool = True,
        stuck_cap: int = 30,
        min_scale: float = 1e-3,
        max_fit_rows: int = 200_000,
        default_asset: str = "asset-0",
        raw: bool = False,
        random_state: int | None = 0,
    ) -> None:
        self.sensors = sensors
        self.windows = windows
        self.stats = stats
        self.residuals = residuals
        self.stuck_cap = stuck_cap
        self.min_scale = min_scale
        self.max_fit_rows = max_fit_rows
        self.default_asset = default_asset
        self.raw = raw
        self.random_state = random_state

    @classmethod
    def from_config(
        cls,
        cfg: FeaturesConfig,
        sensors: Sequence[str],
        *,
        default_asset: str = "asset-0",
        raw: bool = False,
        random_state: int | None = 0,
    ) -> FeatureBuilder:
        """The builder the params describe (``raw=True`` for the baseline candidate)."""
        return cls(
            sensors=list(sensors),
            windows=tuple(cfg.windows),
            stats=tuple(cfg.stats),
            residuals=cfg.residuals,
            stuck_cap=cfg.stuck_cap,
            min_scale=cfg.min_scale,
            max_fit_rows=cfg.max_fit_rows,
            default_asset=default_asset,
            raw=raw,
            random_state=random_state,
        )

    # -- input handling -----------------------------------------------------------------------------

    def _sensor_list(self, df: pd.DataFrame) -> list[str]:
        if self.sensors is not None:
            return list(self.sensors)
        reserved = {schema.TIMESTAMP, schema.ASSET, schema.LABEL, schema.FAULT_KIND, schema.ROW_ID}
        return [c for c in df.columns if c not in reserved and pd.api.types.is_numeric_dtype(df[c])]

    def _prepare(self, df: pd.DataFrame, sensors: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw sensor matrix, asset labels and the (asset, time) order of the rows."""
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"FeatureBuilder expects a pandas DataFrame, got {type(df).__name__}")
        missing = [s for s in sensors if s not in df.columns]
        if missing:
            raise DataError(f"telemetry frame lacks sensor column(s): {', '.join(missing)}")
        try:
            values = _sensor_matrix(df, sensors)
        except (TypeError, ValueError) as err:
            raise DataError(f"sensor columns must be numeric: {err}") from None
        values[~np.isfinite(values)] = np.nan  # +-inf from a broken sensor is treated like missing
        if schema.ASSET in df.columns:
            assets = df[schema.ASSET].astype(str).to_numpy()
        else:
            assets = np.full(len(df), self.default_asset, dtype=object)
        codes, _ = pd.factorize(assets)  # hashing, not sorting: the asset order itself is irrelevant
        if schema.TIMESTAMP in df.columns:
            ts = _epoch_ns(df[schema.TIMESTAMP])
            order = np.lexsort((np.arange(len(df)), ts, codes))
        else:
            order = np.lexsort((np.arange(len(df)), codes))
        return values, assets, order

    # -- fit ----------------------------------------------------------------------------------------

    def fit(self, X: pd.DataFrame, y: object = None) -> FeatureBuilder:
        """Learn per-asset and fleet baselines (median, robust scale) and the cross-sensor model.

        Only the rows given here are used: call it on the training part, never on the holdout.
        """
        sensors = self._sensor_list(X)
        if not sensors:
            raise DataError("FeatureBuilder found no sensor columns to build features from")
        if len(X) == 0:
            raise DataError("cannot fit FeatureBuilder on an empty frame")
        values, assets, order = self._prepare(X, sensors)
        self.sensors_ = sensors
        self.n_features_in_ = len(X.columns)
        fleet_med, fleet_scale = self._robust_location_scale(values, None)
        self.fleet_median_ = fleet_med
        self.fleet_scale_ = fleet_scale
        self.asset_median_: dict[str, np.ndarray] = {}
        self.asset_scale_: dict[str, np.ndarray] = {}
        frame = pd.DataFrame(values, columns=sensors)
        for asset, idx in frame.groupby(assets, sort=True).indices.items():
            med, scale = self._robust_location_scale(values[idx], fleet_scale)
            # a sensor never seen on this asset falls back to the fleet baseline, sensor by sensor
            self.asset_median_[str(asset)] = np.where(np.isnan(med), fleet_med, med)
            self.asset_scale_[str(asset)] = np.where(np.isnan(scale), fleet_scale, scale)
        self.use_residuals_ = bool(self.residuals and len(sensors) >= 2 and not self.raw)
        self.window_ = self._history_needed()
        if self.use_residuals_:
            rows = self._sorted_rows(values, assets, order)
            self._fit_residual_model(rows.z, self._window_means(rows))
        self.feature_names_out_, self.feature_sensor_ = self._names(sensors)
        log.info(
            "FeatureBuilder fitted: %d sensors, %d assets, %d features, window %d",
            len(sensors), len(self.asset_median_), len(self.feature_names_out_), self.window_,
        )
        return self

    def _history_needed(self) -> int:
        """Readings of history (current one included) that determine a row's features exactly.

        Rolling stats need the longest window; the run length is capped at ``stuck_cap``; a trailing
        mean of residuals averages residuals that each depend on a trailing mean of readings, so it
        reaches back ``2 * max(windows) - 1`` readings. Chunked scoring prepends this much context.
        """
        if self.raw:
            return 1
        longest = int(max(self.windows))
        reach = 2 * longest - 1 if self.use_residuals_ else longest
        return int(max(reach, self.stuck_cap, 2))

    def _robust_location_scale(
        self, values: np.ndarray, fallback_scale: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Median and IQR-based sigma per column; a degenerate (constant) column gets a floor.

        The floor is ``min_scale`` times the fleet's scale (1 for the fleet itself): a sensor that
        never moved on an asset in training still gets a finite scale, so a later change is large but
        finite.
        """
        with warnings.catch_warnings():
            # an all-NaN column (sensor never reported) gives NaN here; the caller falls back
            warnings.simplefilter("ignore", RuntimeWarning)
            q1, med, q3 = np.nanpercentile(values, [25, 50, 75], axis=0)
            std = np.nanstd(values, axis=0)
        scale = (q3 - q1) / IQR_TO_SIGMA
        # discrete sensors can have IQR 0 while still moving: fall back to the std before the floor
        scale = np.where(scale > 0, scale, std)
        if fallback_scale is None:  # the fleet itself: a constant or never-reported sensor gets 1
            return med, np.where(np.isnan(scale) | (scale <= 0), 1.0, scale)
        # an asset: NaN (never reported here) is left for the caller's fleet fallback
        return med, np.where(np.isnan(scale), np.nan, np.maximum(scale, self.min_scale * fallback_scale))

    def _sorted_rows(self, values: np.ndarray, assets: np.ndarray, order: np.ndarray) -> _SortedRows:
        """Readings in (asset, time) order, imputed and normalised by the asset baseline."""
        med, scale = self._baseline_rows(assets)
        missing = np.isnan(values)
        z = ((np.where(missing, med, values) - med) / scale)[order]
        starts = _segment_starts(pd.factorize(assets[order])[0])
        return _SortedRows(z=z, raw=values[order], missing=missing[order], starts=starts,
                           pos=_position_in_segment(starts))

    def _window_means(self, rows: _SortedRows) -> dict[int, np.ndarray]:
        return {int(w): _rolling_mean(rows.z, rows.pos, int(w)) for w in self.windows}

    def _baseline_rows(self, assets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-row median and scale; unknown assets get the fleet baseline."""
        inv, uniq = pd.factorize(assets)
        med_tab = np.vstack([self.asset_median_.get(str(a), self.fleet_median_) for a in uniq])
        scale_tab = np.vstack([self.asset_scale_.get(str(a), self.fleet_scale_) for a in uniq])
        unknown = [str(a) for a in uniq if str(a) not in self.asset_median_]
        if unknown:
            log.info("assets without a learned baseline use the fleet baseline: %s", ", ".join(unknown[:5]))
        return med_tab[inv], scale_tab[inv]

    def _fit_residual_model(self, z: np.ndarray, means: dict[int, np.ndarray]) -> None:
        """Cross-sensor model: each sensor regressed on the others' current and smoothed readings.

        The smoothed (trailing-mean) readings let the model follow lagged physics, e.g. a
        temperature that follows load through a thermal time constant. Inputs are the asset-
        normalised readings winsorised at the training 1st/99th percentiles (robust to spikes, and a
        broken sensor cannot drag the predictions of the others far), with a small ridge term
        because sensors are strongly collinear. Residual = actual - predicted, divided by the robust
        scale of the training residuals. Fitted on at most ``max_fit_rows`` sampled rows.

        All sensors share one regressor matrix F = [z, mean_w1(z), ...]; sensor j uses the columns of
        F that do not belong to sensor j. So one covariance of F gives every regression, and one
        matrix product ``F @ coef`` predicts all sensors at transform time.
        """
        n, n_s = z.shape
        rng = np.random.default_rng(self.random_state)
        idx = rng.choice(n, self.max_fit_rows, replace=False) if n > self.max_fit_rows else np.arange(n)
        lo, hi = np.percentile(z[idx], [1, 99], axis=0)
        self.resid_clip_ = np.vstack([lo, hi])
        f = self._regressors(z[idx], {w: m[idx] for w, m in means.items()})
        mu = f.mean(axis=0)
        fc = f - mu
        cov = fc.T @ fc / len(f)
        n_cols = f.shape[1]
        coef = np.zeros((n_cols, n_s))
        intercept = np.zeros(n_s)
        for j in range(n_s):
            keep = np.flatnonzero(np.arange(n_cols) % n_s != j)
            a = cov[np.ix_(keep, keep)]
            ridge = _RIDGE * np.trace(a) / len(keep) + _TINY
            beta = np.linalg.solve(a + ridge * np.eye(len(keep)), cov[keep, j])
            coef[keep, j] = beta
            intercept[j] = mu[j] - mu[keep] @ beta
        self.resid_coef_ = coef
        self.resid_intercept_ = intercept
        resid = z[idx] - (f @ coef + intercept)
        q1, q3 = np.percentile(resid, [25, 75], axis=0)
        scale = (q3 - q1) / IQR_TO_SIGMA
        self.resid_scale_ = np.where(scale > 0, scale, np.maximum(resid.std(axis=0), _TINY))

    def _regressors(self, z: np.ndarray, means: dict[int, np.ndarray]) -> np.ndarray:
        """F = [z, trailing means per window], winsorised at the training percentiles."""
        lo, hi = self.resid_clip_
        return np.hstack([np.clip(a, lo, hi) for a in (z, *[means[int(w)] for w in self.windows])])

    def _residuals(self, z: np.ndarray, means: dict[int, np.ndarray]) -> np.ndarray:
        """Standardised cross-sensor residuals of every sensor (see ``_fit_residual_model``)."""
        pred = self._regressors(z, means) @ self.resid_coef_ + self.resid_intercept_
        return (z - pred) / self.resid_scale_

    def _names(self, sensors: list[str]) -> tuple[list[str], dict[str, str | None]]:
        names: list[str] = []
        if self.raw:
            names = list(sensors)
            return names, {s: s for s in sensors}
        for s in sensors:
            names += [f"{s}__dev", f"{s}__roc"]
            for w in self.windows:
                names += [f"{s}__{stat}_{w}" for stat in self.stats]
            if self.use_residuals_:
                names.append(f"{s}__resid")
                names += [f"{s}__resid_mean_{w}" for w in self.windows]
            names += [f"{s}__stuck", f"{s}__missing"]
        mapping: dict[str, str | None] = {n: n.split("__", 1)[0] for n in names}
        return names, mapping

    # -- transform ----------------------------------------------------------------------------------

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        check_is_fitted(self, "feature_names_out_")
        return np.asarray(self.feature_names_out_, dtype=object)

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """Features for every input row, in the input's order and index (float32 to halve memory).

        Rows are processed per asset in time order; a frame shorter than ``window_`` still works
        (windows use whatever history is there). Missing readings are imputed with the asset median.
        """
        check_is_fitted(self, "feature_names_out_")
        values, assets, order = self._prepare(X, self.sensors_)
        n = values.shape[0]
        if self.raw:
            med, _ = self._baseline_rows(assets)
            imputed = np.where(np.isnan(values), med, values)
            return pd.DataFrame(imputed, index=X.index, columns=self.feature_names_out_)

        rows = self._sorted_rows(values, assets, order)
        del values
        means = self._window_means(rows)
        z = rows.z
        # each block is written into the float32 output as soon as it exists, to keep peak memory low
        out = np.empty((n, len(self.feature_names_out_)), dtype=np.float32, order="F")  # column writes
        col_of = {name: i for i, name in enumerate(self.feature_names_out_)}

        def put(kind: str, arr: np.ndarray) -> None:
            out[:, [col_of[f"{s}__{kind}"] for s in self.sensors_]] = arr

        put("dev", z)
        put("roc", _diff_in_segment(z, rows.starts))
        for w in self.windows:
            stats = _rolling_stats(z, rows.pos, int(w), [k for k in self.stats if k != "mean"],
                                   mean=means[int(w)])
            if "mean" in self.stats:
                put(f"mean_{w}", means[int(w)])
            for stat, arr in stats.items():
                put(f"{stat}_{w}", arr)
        if self.use_residuals_:
            resid = self._residuals(z, means)
            put("resid", resid)
            for w in self.windows:
                put(f"resid_mean_{w}", _rolling_mean(resid, rows.pos, int(w)))
        put("stuck", np.minimum(_run_length(rows.raw, rows.starts), self.stuck_cap) / self.stuck_cap)
        put("missing", rows.missing)
        if not np.array_equal(order, np.arange(n)):
            unsorted = np.empty_like(out)
            unsorted[order] = out
            out = unsorted
        return pd.DataFrame(out, index=X.index, columns=self.feature_names_out_, copy=False)


# ---------------------------------------------------------------------------------------------------
# time_split
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Train / validation / holdout parts of a canonical frame, cut by time.

    ``validation_start`` / ``holdout_start`` are the first timestamps of those parts;
    ``holdout_sha256`` fingerprints the holdout (``frame_sha256``) so later stages can prove they
    evaluated on exactly these rows and that training never saw them.
    """

    train: pd.DataFrame
    validation: pd.DataFrame
    holdout: pd.DataFrame
    validation_start: pd.Timestamp
    holdout_start: pd.Timestamp
    holdout_sha256: str
    train_rows: int | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def boundaries(self) -> dict[str, object]:
        """JSON-ready summary for ``data/processed/split.json``."""
        return {
            "validation_start": self.validation_start.isoformat(),
            "holdout_start": self.holdout_start.isoformat(),
            "holdout_sha256": self.holdout_sha256,
            "train_rows": self.train_rows,
            "rows": dict(self.counts),
        }


def _cut_by_time(ts: pd.Series, fraction_from_end: float) -> pd.Timestamp:
    """The timestamp where the last ``fraction_from_end`` of the rows (in time order) begins."""
    sorted_ts = np.sort(ts.to_numpy(dtype="datetime64[ns]"))
    k = int(np.floor(len(sorted_ts) * (1.0 - fraction_from_end)))
    k = min(max(k, 1), len(sorted_ts) - 1)
    return pd.Timestamp(sorted_ts[k])


def time_split(df: pd.DataFrame, split: SplitConfig, *, train_rows: int | None = None) -> Split:
    """Cut a canonical frame into train / validation / holdout by time; no row is in two parts.

    Without ``train_rows``: the holdout is the most recent ``holdout_fraction`` of the rows (by
    timestamp, across all assets — one cut time for the whole fleet), validation the
    ``validation_fraction`` before it, train everything earlier. A timestamp is never split between
    two parts, so the parts are ordered in time.

    With ``train_rows`` (benchmark data whose first rows are the official, unlabelled training part):
    train = those rows; the labelled rest is shared between validation and holdout in the ratio
    ``validation_fraction : holdout_fraction`` (both rescaled to that part), holdout last. Keeping all of
    the labelled part for evaluation matters because it is small and its anomalies are few.
    """
    if schema.TIMESTAMP not in df.columns:
        raise DataError(f"time_split needs a '{schema.TIMESTAMP}' column")
    if len(df) < 3:
        raise DataError(f"time_split needs at least 3 rows, got {len(df)}")
    ts = pd.to_datetime(df[schema.TIMESTAMP])
    if train_rows is not None:
        if not 0 < train_rows < len(df) - 1:
            raise DataError(f"data.train_rows={train_rows} leaves no labelled rows in a {len(df)}-row frame")
        train = df.iloc[:train_rows]
        rest = df.iloc[train_rows:]
        share = split.holdout_fraction / (split.validation_fraction + split.holdout_fraction)
        holdout_start = _cut_by_time(ts.iloc[train_rows:], share)
        rest_ts = ts.iloc[train_rows:]
        validation = rest[(rest_ts < holdout_start).to_numpy()]
        holdout = rest[(rest_ts >= holdout_start).to_numpy()]
        validation_start = pd.Timestamp(rest_ts.min())
    else:
        if split.validation_fraction + split.holdout_fraction >= 1.0:
            raise DataError("split.validation_fraction + split.holdout_fraction must leave rows for training")
        holdout_start = _cut_by_time(ts, split.holdout_fraction)
        validation_start = _cut_by_time(ts, split.holdout_fraction + split.validation_fraction)
        t = ts.to_numpy()
        train = df[t < validation_start.to_datetime64()]
        validation = df[(t >= validation_start.to_datetime64()) & (t < holdout_start.to_datetime64())]
        holdout = df[t >= holdout_start.to_datetime64()]
    for name, part in (("train", train), ("validation", validation), ("holdout", holdout)):
        if part.empty:
            raise DataError(f"time_split left the {name} part empty ({len(df)} rows); use more data")
    holdout = holdout.sort_values([c for c in (schema.ASSET, schema.TIMESTAMP) if c in holdout.columns],
                                  kind="stable")
    counts = {"train": len(train), "validation": len(validation), "holdout": len(holdout)}
    log.info("time_split: %s (holdout from %s)", counts, holdout_start)
    return Split(
        train=train,
        validation=validation,
        holdout=holdout,
        validation_start=validation_start,
        holdout_start=holdout_start,
        holdout_sha256=frame_sha256(holdout.reset_index(drop=True)),
        train_rows=train_rows,
        counts=counts,
    )
