"""The custom anomaly model (``EnsembleDetector``) and the off-the-shelf baseline (``BaselineDetector``).

Both follow scikit-learn's outlier-detector conventions (``score_samples``/``decision_function``:
higher = more normal; ``predict``: +1 inlier, -1 outlier) so that sklearn tooling and checks work,
and both add ``anomaly_score(X)`` in plantwatch's direction (``schema.HIGHER_IS_MORE_ANOMALOUS``:
higher = more anomalous), which is what the bundle, thresholds and metrics use.

Why an ensemble: faults in telemetry look different. A spike or a drifting sensor is one extreme
feature (robust z-scores see it), a broken relation between sensors is unusual only jointly
(robust Mahalanobis distance in a PCA space, plus the PCA reconstruction error), and odd
combinations in between are what an isolation forest isolates quickly. Each detector's score is
put on a common scale (a robust z of its own training scores) before they are averaged, so no
detector dominates just because its raw scores are larger. The PCA reconstruction error is
available as a fourth member but off by default (it did not help on the benchmarks).
"""

from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial.distance import cdist
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.covariance import EmpiricalCovariance, MinCovDet
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.ensemble._iforest import _average_path_length
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from plantwatch import schema
from plantwatch.config.train import FeaturesConfig, ModelConfig
from plantwatch.features import FeatureBuilder

log = logging.getLogger(__name__)

#: IQR of a standard normal: IQR / 1.349 is a sigma-like robust scale.
IQR_TO_SIGMA = 1.349
#: Rows scored at a time (bounds float64 temporaries to a few tens of MB at any width).
_CHUNK_ROWS = 65_536
#: Names of the member detectors, in the order of ``detector_weights_``.
DETECTORS = ("zscore", "iforest", "covariance", "pca_residual")
#: Above this many (row, tree) pairs a forest is walked tree by tree in sklearn's compiled code;
#: below it, all trees at once in numpy (no per-tree call overhead). A speed knob only: both walks
#: reach the same leaves, so scores do not depend on it.
_VECTOR_WALK_MAX_PAIRS = 2_000


# ---------------------------------------------------------------------------------------------------
# fast scoring paths for fitted sklearn members (same arithmetic, without per-call overhead)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ForestTable:
    """A fitted IsolationForest's trees as one flat node table (global node ids).

    Leaves point to themselves, so walking ``depth`` steps from the roots lands every (row, tree)
    pair on its leaf without masking. ``leaf_depth`` holds sklearn's per-leaf path length term
    (decision path length + average path length of the leaf's samples - 1), computed exactly as
    ``IsolationForest`` does per call.
    """

    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    missing_left: np.ndarray
    leaf_depth: np.ndarray
    depth: int
    denominator: float


#: Node tables of the forests seen so far, keyed by the fitted forest itself: built on first use,
#: never pickled into a bundle, dropped with the forest (a refit makes a new forest object).
_FOREST_TABLES: weakref.WeakKeyDictionary[IsolationForest, _ForestTable] = weakref.WeakKeyDictionary()


def _forest_table(forest: IsolationForest) -> _ForestTable:
    table = _FOREST_TABLES.get(forest)
    if table is not None:
        return table
    roots, feature, threshold, left, right, missing, leaf_depth = [], [], [], [], [], [], []
    offset, depth = 0, 0
    trees = zip(forest.estimators_, forest.estimators_features_, forest._decision_path_lengths,
                forest._average_path_length_per_tree, strict=True)
    for est, cols, path_len, avg_len in trees:
        t = est.tree_
        ids = np.arange(t.node_count, dtype=np.int64) + offset
        leaf = t.children_left == -1
        roots.append(offset)
        feature.append(np.where(leaf, 0, np.asarray(cols, dtype=np.int64)[np.maximum(t.feature, 0)]))
        threshold.append(np.where(leaf, np.inf, t.threshold))
        left.append(np.where(leaf, ids, t.children_left + offset))
        right.append(np.where(leaf, ids, t.children_right + offset))
        missing.append(np.asarray(t.missing_go_to_left, dtype=bool))
        leaf_depth.append(path_len + avg_len - 1.0)
        offset += t.node_count
        depth = max(depth, int(t.max_depth))
    table = _ForestTable(
        roots=np.asarray(roots, dtype=np.int64), feature=np.concatenate(feature),
        threshold=np.concatenate(threshold).astype(np.float64), left=np.concatenate(left),
        right=np.concatenate(right), missing_left=np.concatenate(missing),
        leaf_depth=np.concatenate(leaf_depth), depth=depth,
        denominator=float(len(forest.estimators_) * _average_path_length([forest._max_samples])[0]),
    )
    _FOREST_TABLES[forest] = table
    return table


def _forest_leaf_depths(forest: IsolationForest, table: _ForestTable, X32: np.ndarray) -> np.ndarray:
    """(trees, rows) path-length term of the leaf each row reaches in each tree."""
    n, n_trees = X32.shape[0], len(table.roots)
    if n * n_trees > _VECTOR_WALK_MAX_PAIRS:
        leaves = [est.tree_.apply(X32 if cols is None else X32[:, cols]) for est, cols in
                  zip(forest.estimators_, _tree_columns(forest), strict=True)]
        return table.leaf_depth[np.vstack(leaves) + table.roots[:, None]]
    node = np.repeat(table.roots, n)  # (tree, row) pairs, tree-major
    row = np.tile(np.arange(n), n_trees)
    for _ in range(table.depth):
        x = X32[row, table.feature[node]]
        go_left = np.where(np.isnan(x), table.missing_left[node], x <= table.threshold[node])
        node = np.where(go_left, table.left[node], table.right[node])
    return table.leaf_depth[node].reshape(n_trees, n)


def _tree_columns(forest: IsolationForest) -> list[np.ndarray | None]:
    """Columns each tree was grown on; None when every tree saw all columns (sklearn's own rule)."""
    if forest._max_features == forest.n_features_in_:
        return [None] * len(forest.estimators_)
    return list(forest.estimators_features_)


def _iforest_score_samples(forest: IsolationForest, X: np.ndarray) -> np.ndarray:
    """``forest.score_samples(X)`` for a dense float matrix, without sklearn's per-call overhead.

    sklearn validates X and walks the trees one joblib task each (~0.2 ms per tree per call). Here
    the same leaves are found (all trees at once for small inputs) and the path lengths are summed
    in tree order from zero, as sklearn does, so the result is bit-identical.
    """
    table = _forest_table(forest)
    X32 = np.asarray(X, dtype=np.float32)
    depths = np.zeros(X32.shape[0])
    for per_tree in _forest_leaf_depths(forest, table, X32):
        depths += per_tree
    denominator = table.denominator
    scores = 2 ** (-np.divide(depths, denominator, out=np.ones_like(depths), where=denominator != 0))
    return -scores


def _pca_transform(pca: PCA, X: np.ndarray) -> np.ndarray:
    """``pca.transform(X)`` for a validated dense X: sklearn's own arithmetic, minus its validation."""
    if pca.whiten:
        return pca.transform(X)
    projected = X @ pca.components_.T
    projected -= np.reshape(pca.mean_, (1, -1)) @ pca.components_.T
    return projected


def _squared_mahalanobis(cov: EmpiricalCovariance, X: np.ndarray) -> np.ndarray:
    """``cov.mahalanobis(X)`` for a validated dense X: the same scipy kernel on the fitted
    ``location_`` / precision, without sklearn's validation and pairwise-distance dispatch."""
    loc = cov.location_[np.newaxis, :]
    dtype = np.float32 if X.dtype == np.float32 and loc.dtype == np.float32 else np.float64
    dist = cdist(np.asarray(X, dtype=dtype), np.asarray(loc, dtype=dtype), metric="mahalanobis",
                 VI=cov.get_precision())
    return np.reshape(dist, (len(X),)) ** 2


def _plain_float_matrix(est: BaseEstimator, X: Any, allow_nan: bool) -> np.ndarray | None:
    """X itself when sklearn's ``validate_data(reset=False)`` would return it unchanged, else None.

    True for a finite (or NaN, with ``allow_nan``) 2-D float32/float64 ndarray with the fitted
    width and an estimator fitted without feature names (the bundle's feature matrices); anything
    else goes through sklearn's validation, with its errors and warnings.
    """
    if (not isinstance(X, np.ndarray) or X.ndim != 2 or X.dtype not in (np.float32, np.float64)
            or X.shape[0] == 0 or X.shape[1] != getattr(est, "n_features_in_", -1)
            or hasattr(est, "feature_names_in_")):
        return None
    bad = np.isinf(X) if allow_nan else ~np.isfinite(X)
    return None if bad.any() else X


def _tail_scales(a: np.ndarray, q: float, fallback: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances from the median to the lower / upper ``q`` tail quantile, per column.

    Scaling each side by its own tail distance makes |z| = 1 mean "as extreme as the most extreme
    (1 - q) of training" for every feature, whatever the shape of its distribution: a heavy-tailed
    feature (rate of change) no longer outshouts a well-behaved one (level) on ordinary rows.
    A side with no spread at all uses ``fallback`` (the feature's robust scale).
    """
    lo, med, hi = np.percentile(a, [100.0 * (1.0 - q), 50.0, 100.0 * q], axis=0)
    up = np.where(hi - med > 0, hi - med, fallback)
    down = np.where(med - lo > 0, med - lo, fallback)
    return down, up


def _robust_center_scale(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and IQR-sigma per column; a zero IQR falls back to the std, a constant column to 1."""
    q1, med, q3 = np.percentile(a, [25, 50, 75], axis=0)
    scale = (q3 - q1) / IQR_TO_SIGMA
    scale = np.where(scale > 0, scale, np.std(a, axis=0))
    return med, np.where(scale > 0, scale, 1.0)


class EnsembleDetector(OutlierMixin, BaseEstimator):
    """Ensemble of robust z-scores, an isolation forest and robust covariance on engineered features.

    Parameters
    ----------
    contamination : float in (0, 0.5]
        Share of training rows that ``predict`` calls outliers (sets ``offset_``, like sklearn's).
    n_estimators, max_samples : isolation forest size (trees, rows per tree).
    n_components : dimensions of the PCA space used by the robust covariance detector.
    top_k : the z-score detector averages the ``top_k`` largest |z| of a row (1 = max).
    w_zscore, w_iforest, w_covariance, w_pca_residual : weights of the member detectors (>= 0).
    combine : "mean" (weighted mean of normalised scores) or "max" (largest weighted score).
    z_clip : |z| cap, so one broken feature cannot outvote everything else by orders of magnitude.
    tail_quantile : the z-score detector measures a feature in units of the distance from its training
        median to this quantile (each side separately), so |z| = 1 means "as unusual as the most
        extreme 1 - q of training".
    joint_kinds : feature kinds (``<sensor>__<kind>`` names) the covariance / PCA detectors use; all
        features when None or when no feature names are known.
    feature_names : names of X's columns when X arrives as a plain array (the pipeline featurises
        into float32 arrays; pass ``FeatureBuilder.feature_names_out_``). Only used to find the
        ``joint_kinds`` columns; a DataFrame's own column names take precedence.
    max_fit_rows : rows sampled (seeded) for the normalisation statistics and the forest.
    mcd_max_rows : rows sampled for MinCovDet, whose cost grows quickly with rows.
    random_state : seed for every sampled step (same seed, same data -> same scores).
    """

    _parameter_constraints: dict = {
        "contamination": [Interval(Real, 0.0, 0.5, closed="right")],
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "max_samples": [Interval(Integral, 2, None, closed="left")],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "top_k": [Interval(Integral, 1, None, closed="left")],
        "w_zscore": [Interval(Real, 0.0, None, closed="left")],
        "w_iforest": [Interval(Real, 0.0, None, closed="left")],
        "w_covariance": [Interval(Real, 0.0, None, closed="left")],
        "w_pca_residual": [Interval(Real, 0.0, None, closed="left")],
        "combine": [StrOptions({"mean", "max"})],
        "z_clip": [Interval(Real, 0.0, None, closed="neither")],
        "tail_quantile": [Interval(Real, 0.5, 1.0, closed="neither")],
        "max_fit_rows": [Interval(Integral, 2, None, closed="left")],
        "mcd_max_rows": [Interval(Integral, 2, None, closed="left")],
        "joint_kinds": [tuple, list, None],
        "feature_names": [tuple, list, None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        contamination: float = 0.01,
        n_estimators: int = 100,
        max_samples: int = 256,
        n_components: int = 8,
        top_k: int = 10,
        w_zscore: float = 1.0,
        w_iforest: float = 1.0,
        w_covariance: float = 1.0,
        w_pca_residual: float = 0.0,
        combine: str = "mean",
        z_clip: float = 10.0,
        tail_quantile: float = 0.99,
        max_fit_rows: int = 50_000,
        mcd_max_rows: int = 3_000,
        joint_kinds: tuple[str, ...] | None = ("dev",),
        feature_names: Sequence[str] | None = None,
        random_state: int | None = None,
    ) -> None:
        self.contamination = contamination
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.n_components = n_components
        self.top_k = top_k
        self.w_zscore = w_zscore
        self.w_iforest = w_iforest
        self.w_covariance = w_covariance
        self.w_pca_residual = w_pca_residual
        self.combine = combine
        self.z_clip = z_clip
        self.tail_quantile = tail_quantile
        self.max_fit_rows = max_fit_rows
        self.mcd_max_rows = mcd_max_rows
        self.joint_kinds = joint_kinds
        self.feature_names = feature_names
        self.random_state = random_state

    @classmethod
    def from_config(cls, cfg: ModelConfig, random_state: int | None = 0) -> EnsembleDetector:
        """The detector the ``train.model`` params describe (the grid is not applied here)."""
        return cls(random_state=random_state, **cfg.estimator_params())

    # -- fit ----------------------------------------------------------------------------------------

    def fit(self, X: Any, y: object = None) -> EnsembleDetector:
        """Fit every member detector on (a seeded sample of) X and learn how to normalise its scores.

        ``y`` is ignored: the detector is unsupervised (fit it on data taken as normal).
        """
        self._validate_params()
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        weights = self._weights()
        if weights.sum() <= 0:
            raise ValueError("EnsembleDetector needs at least one detector weight > 0")
        rng = check_random_state(self.random_state)
        n, p = X.shape
        sample = X[np.sort(rng.choice(n, self.max_fit_rows, replace=False))] if n > self.max_fit_rows else X
        sample64 = np.asarray(sample, dtype=np.float64)
        self.center_, self.scale_ = _robust_center_scale(sample64)
        self.tail_down_, self.tail_up_ = _tail_scales(sample64, self.tail_quantile, self.scale_)
        self.detector_weights_ = weights
        self.joint_columns_ = self._joint_columns(p)
        self.iforest_: IsolationForest | None = None
        self.pca_: PCA | None = None
        self.covariance_: EmpiricalCovariance | None = None
        z = self._z(sample64)
        if weights[1] > 0:
            self.iforest_ = IsolationForest(
                n_estimators=self.n_estimators,
                max_samples=min(self.max_samples, len(z)),
                random_state=rng.randint(np.iinfo(np.int32).max),
            ).fit(z)
        if weights[2] > 0 or weights[3] > 0:
            self._fit_covariance(z[:, self.joint_columns_], rng)
        raw = self._raw_scores(sample64)
        self.score_center_ = np.median(raw, axis=0)
        self.score_scale_ = _robust_center_scale(raw)[1]
        combined = self._combine(raw)
        self.offset_ = float(np.percentile(-combined, 100.0 * self.contamination))
        log.debug("EnsembleDetector fitted on %d rows x %d features (sample %d)", n, p, len(sample))
        return self

    def _joint_columns(self, p: int) -> np.ndarray:
        """Columns the joint (covariance / PCA) detectors use.

        Features whose name ends in one of ``joint_kinds`` (``FeatureBuilder`` names are
        ``<sensor>__<kind>``); all columns when no feature names are known or nothing matches. The
        default ("dev": every sensor's current deviation from its asset baseline) makes the robust
        covariance a per-asset-normalised, robust version of what a detector on raw readings sees.
        Names come from a DataFrame's columns, else from ``feature_names`` (arrays carry none:
        without either, ``joint_kinds`` cannot apply, and the log says so).
        """
        names = getattr(self, "feature_names_in_", None)
        if names is None and self.feature_names is not None:
            names = list(self.feature_names)
            if len(names) != p:
                raise ValueError(f"feature_names has {len(names)} names but X has {p} columns")
        if self.joint_kinds is None:
            return np.arange(p)
        if names is None:
            log.info("joint_kinds %s not applied: X has no feature names (pass feature_names); "
                     "the joint detectors use all %d columns", list(self.joint_kinds), p)
            return np.arange(p)
        kinds = tuple(self.joint_kinds)
        cols = np.array([i for i, n in enumerate(names) if str(n).split("__")[-1] in kinds], dtype=int)
        return cols if len(cols) else np.arange(p)

    def _weights(self) -> np.ndarray:
        return np.array([self.w_zscore, self.w_iforest, self.w_covariance, self.w_pca_residual], dtype=float)

    def _z(self, X64: np.ndarray) -> np.ndarray:
        """Robust per-feature z-scores (median / IQR), clipped to +-z_clip, as float32."""
        z = (X64 - self.center_) / self.scale_
        return np.clip(z, -self.z_clip, self.z_clip, out=z).astype(np.float32)

    def _tail_z(self, X64: np.ndarray) -> np.ndarray:
        """|x - median| in units of each feature's own training tail (see ``_tail_scales``), clipped."""
        d = X64 - self.center_
        t = np.abs(d) / np.where(d >= 0, self.tail_up_, self.tail_down_)
        return np.minimum(t, self.z_clip, out=t)

    def _fit_covariance(self, z: np.ndarray, rng: np.random.RandomState) -> None:
        """PCA on the z space, robust covariance (MinCovDet) of the leading components.

        MinCovDet is fitted on at most ``mcd_max_rows`` rows (its cost grows fast with n); if it
        cannot find a non-singular subset (constant or collinear data) the plain covariance is used
        instead, so fitting never fails on degenerate but valid input.
        """
        k = int(min(self.n_components, z.shape[1], max(z.shape[0] - 1, 1)))
        self.pca_ = PCA(n_components=k, random_state=rng.randint(np.iinfo(np.int32).max)).fit(z)
        scores = self.pca_.transform(z)
        if len(scores) > self.mcd_max_rows:
            scores = scores[rng.choice(len(scores), self.mcd_max_rows, replace=False)]
        with warnings.catch_warnings():
            # "covariance matrix not full rank" on constant data: handled by the fallback below
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            try:
                self.covariance_ = MinCovDet(random_state=rng.randint(np.iinfo(np.int32).max)).fit(scores)
            except (ValueError, np.linalg.LinAlgError):
                self.covariance_ = EmpiricalCovariance().fit(scores)

    def _raw_scores(self, X: np.ndarray) -> np.ndarray:
        """Raw member scores (higher = more anomalous), one column per detector; unused ones are 0.

        Computed in row chunks so that scoring a million rows never holds more than one chunk's
        float64 temporaries.
        """
        out = np.zeros((X.shape[0], len(DETECTORS)))
        for lo in range(0, X.shape[0], _CHUNK_ROWS):
            X64 = np.asarray(X[lo:lo + _CHUNK_ROWS], dtype=np.float64)
            out[lo:lo + len(X64)] = self._raw_chunk(X64)
        return out

    def _raw_chunk(self, X64: np.ndarray) -> np.ndarray:
        out = np.zeros((X64.shape[0], len(DETECTORS)))
        p = X64.shape[1]
        if self.detector_weights_[0] > 0:
            k = min(self.top_k, p)
            tail = self._tail_z(X64)
            out[:, 0] = np.partition(tail, p - k, axis=1)[:, p - k:].mean(axis=1)
        if self.iforest_ is None and self.pca_ is None:
            return out
        z = self._z(X64)
        if self.iforest_ is not None:
            out[:, 1] = -_iforest_score_samples(self.iforest_, z)
        if self.pca_ is not None:
            zj = z[:, self.joint_columns_]
            proj = _pca_transform(self.pca_, zj)
            if self.covariance_ is not None:
                out[:, 2] = np.sqrt(np.maximum(_squared_mahalanobis(self.covariance_, proj), 0.0))
            if self.detector_weights_[3] > 0:
                recon = self.pca_.inverse_transform(proj)
                out[:, 3] = np.sqrt(((zj - recon) ** 2).mean(axis=1))
        return out

    def _normalised(self, raw: np.ndarray) -> np.ndarray:
        """Each member's score as a robust z of its own training scores (a common scale)."""
        return (raw - self.score_center_) / self.score_scale_

    def _combine(self, raw: np.ndarray) -> np.ndarray:
        norm = self._normalised(raw)
        w = self.detector_weights_
        used = w > 0
        if self.combine == "max":
            return (norm[:, used] * w[used]).max(axis=1)
        return norm[:, used] @ w[used] / w[used].sum()

    # -- scores -------------------------------------------------------------------------------------

    def _checked(self, X: Any) -> np.ndarray:
        if not hasattr(self, "offset_"):
            check_is_fitted(self, "offset_")
        plain = _plain_float_matrix(self, X, allow_nan=False)
        if plain is not None:
            return plain
        return validate_data(self, X, dtype=[np.float64, np.float32], reset=False)

    def anomaly_score(self, X: Any) -> np.ndarray:
        """Anomaly score per row: HIGHER = MORE anomalous (``schema.HIGHER_IS_MORE_ANOMALOUS``)."""
        return self._combine(self._raw_scores(self._checked(X)))

    def score(self, X: Any, y: object = None) -> np.ndarray:
        """Alias of ``anomaly_score`` (per-row, higher = more anomalous); ``y`` is ignored."""
        return self.anomaly_score(X)

    def score_samples(self, X: Any) -> np.ndarray:
        """sklearn convention: higher = more normal (the negated anomaly score)."""
        return -self.anomaly_score(X)

    def decision_function(self, X: Any) -> np.ndarray:
        """``score_samples - offset_``: negative for the ``contamination`` most anomalous training rows."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """+1 for inliers, -1 for outliers (decision_function < 0)."""
        return np.where(self.decision_function(X) < 0, -1, 1)

    def member_scores(self, X: Any) -> dict[str, np.ndarray]:
        """Normalised score of each member detector (for reports and debugging)."""
        norm = self._normalised(self._raw_scores(self._checked(X)))
        return {name: norm[:, i] for i, name in enumerate(DETECTORS) if self.detector_weights_[i] > 0}

    def feature_contributions(self, X: Any) -> np.ndarray:
        """How far each feature pushed a row towards "anomalous" (n_rows, n_features), >= 0.

        The feature's distance from its training median in units of its own training tail (the
        z-score detector's view): 1 = as unusual as the most extreme 1 % of training, clipped at
        ``z_clip``.

        The bundle sums these per source sensor (``FeatureBuilder.feature_sensor_``) to report the
        sensors behind an alert.
        """
        X = self._checked(X)
        out = np.empty(X.shape, dtype=np.float64)
        for lo in range(0, X.shape[0], _CHUNK_ROWS):
            out[lo:lo + _CHUNK_ROWS] = self._tail_z(np.asarray(X[lo:lo + _CHUNK_ROWS], dtype=np.float64))
        return out


class BaselineDetector(OutlierMixin, BaseEstimator):
    """The off-the-shelf candidate: scikit-learn's IsolationForest with DEFAULT settings.

    Fed the raw sensor columns (``FeatureBuilder(raw=True)``). Only ``random_state`` is exposed, so
    the comparison with the custom model is against the library defaults, not a tuned forest.
    """

    def __init__(self, random_state: int | None = None) -> None:
        self.random_state = random_state

    def fit(self, X: Any, y: object = None) -> BaselineDetector:
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_all_finite="allow-nan")
        self.iforest_ = IsolationForest(random_state=self.random_state).fit(X)
        self.offset_ = float(self.iforest_.offset_)
        return self

    def _checked(self, X: Any) -> np.ndarray:
        if not hasattr(self, "iforest_"):
            check_is_fitted(self, "iforest_")
        plain = _plain_float_matrix(self, X, allow_nan=True)
        if plain is not None:
            return plain
        return validate_data(
            self, X, dtype=[np.float64, np.float32], ensure_all_finite="allow-nan", reset=False
        )

    def score_samples(self, X: Any) -> np.ndarray:
        """sklearn convention: higher = more normal (the forest's own ``score_samples``)."""
        X = self._checked(X)
        return _iforest_score_samples(self.iforest_, X)

    def anomaly_score(self, X: Any) -> np.ndarray:
        """Anomaly score per row: HIGHER = MORE anomalous."""
        return -self.score_samples(X)

    def score(self, X: Any, y: object = None) -> np.ndarray:
        """Alias of ``anomaly_score`` (per-row); ``y`` is ignored."""
        return self.anomaly_score(X)

    def decision_function(self, X: Any) -> np.ndarray:
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        return np.where(self.decision_function(X) < 0, -1, 1)

    def feature_contributions(self, X: Any) -> np.ndarray:
        """A forest has no per-feature attribution here: zeros, so callers need no special case."""
        X = self._checked(X)
        return np.zeros(X.shape, dtype=np.float64)

    def __sklearn_tags__(self):  # noqa: ANN204 - sklearn's Tags type
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


# ---------------------------------------------------------------------------------------------------
# candidates and hyperparameter selection
# ---------------------------------------------------------------------------------------------------

CANDIDATE_KINDS = ("baseline", "custom")


def make_candidate(
    kind: str,
    features: FeaturesConfig,
    model: ModelConfig,
    sensors: Sequence[str],
    *,
    default_asset: str = "asset-0",
    seed: int = 0,
    overrides: Mapping[str, object] | None = None,
) -> tuple[FeatureBuilder, EnsembleDetector | BaselineDetector]:
    """Unfitted (features, detector) pair of a candidate, as the params describe it.

    "baseline": raw (imputed) sensor columns + ``BaselineDetector`` (IsolationForest defaults).
    "custom": engineered features + ``EnsembleDetector`` with ``train.model`` (plus ``overrides``,
    e.g. the grid point CV picked in ``plantwatch.training``). Fit the builder on the training rows,
    transform the whole frame (features need history), fit the detector on the training rows.
    """
    if kind not in CANDIDATE_KINDS:
        raise ValueError(f"unknown candidate kind {kind!r}; choose one of {', '.join(CANDIDATE_KINDS)}")
    builder = FeatureBuilder.from_config(
        features, sensors, default_asset=default_asset, raw=kind == "baseline", random_state=seed
    )
    if kind == "baseline":
        return builder, BaselineDetector(random_state=seed)
    detector = EnsembleDetector.from_config(model, random_state=seed)
    if overrides:
        detector.set_params(**dict(overrides))
    return builder, detector


def grid_candidates(model: ModelConfig) -> list[dict[str, object]]:
    """Every combination of ``train.model.grid`` as estimator overrides, in params order."""
    keys = list(model.grid)  # params order: the first grid point is the first of each list
    return [dict(zip(keys, values, strict=True)) for values in product(*(model.grid[k] for k in keys))]


def fit_candidate(
    kind: str,
    train: pd.DataFrame,
    features: FeaturesConfig,
    model: ModelConfig,
    sensors: Sequence[str],
    *,
    default_asset: str = "asset-0",
    seed: int = 0,
    fit_on_normal: bool = True,
    overrides: Mapping[str, object] | None = None,
) -> tuple[FeatureBuilder, EnsembleDetector | BaselineDetector]:
    """Fit a candidate on canonical training rows: features on the stream, detector on normal rows.

    With ``fit_on_normal`` rows labelled anomalous are left out of both fits, but features are still
    computed on the uninterrupted stream so that the kept rows' windows see their real history.
    """
    builder, detector = make_candidate(
        kind, features, model, sensors, default_asset=default_asset, seed=seed, overrides=overrides
    )
    normal = np.ones(len(train), dtype=bool)
    if fit_on_normal and schema.LABEL in train.columns:
        normal = train[schema.LABEL].fillna(0).to_numpy() == 0
    builder.fit(train[normal])
    name_features(detector, builder)
    detector.fit(builder.transform(train).to_numpy()[normal])
    return builder, detector


def name_features(
    detector: EnsembleDetector | BaselineDetector, builder: FeatureBuilder
) -> EnsembleDetector | BaselineDetector:
    """Give an ``EnsembleDetector`` the names of a fitted builder's feature columns (before ``fit``).

    Features travel as plain float arrays (``plantwatch.bundle.feature_matrix``; names would cost a
    DataFrame and sklearn's name checks on every scoring call), so without this the detector cannot
    find its ``joint_kinds`` columns and its joint members see every feature. A no-op for the baseline.
    """
    if isinstance(detector, EnsembleDetector):
        detector.set_params(feature_names=tuple(builder.feature_names_out_))
    return detector


def score_rows(
    builder: FeatureBuilder,
    detector: EnsembleDetector | BaselineDetector,
    frame: pd.DataFrame,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Anomaly scores of ``frame[rows]`` (boolean mask), featurised with all of ``frame`` as history."""
    X = builder.transform(frame).to_numpy()
    return detector.anomaly_score(X if rows is None else X[rows])
