"""The scoring fast paths give the same results as the library calls they replace.

Scoring one reading used to spend most of its time in per-call overhead: a pandas ``rolling`` object
per statistic, sklearn's input validation and one joblib task per isolation tree, and the
pairwise-distance dispatch behind ``MinCovDet.mahalanobis``. The fast paths call the same compiled
kernels / the same arithmetic directly. Each test here swaps the previous path back in (the public
pandas / sklearn calls) and checks the results agree to 1e-9 on random frames of 1, 2, 239, 240 and
1,000 readings over several assets (one without a learned baseline), shuffled, with missing values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.covariance import MinCovDet
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest

from plantwatch import features, model, schema, scoring
from plantwatch.bundle import DetectorBundle, load_bundle
from tests.integration.test_service import make_project, train_bundles

TOL = 1e-9
SIZES = (1, 2, 239, 240, 1000)
#: An asset the bundles never saw: the features fall back to the fleet baseline for it.
NEW_ASSET = "pump-new"


# --------------------------------------------------------------------------------------------
# the previous paths (public pandas / sklearn calls), swapped in with monkeypatch
# --------------------------------------------------------------------------------------------


def _pandas_rolling(a: np.ndarray, window: int, stat: str) -> np.ndarray:
    roll = pd.DataFrame(a).rolling(window, min_periods=1)
    return (roll.std(ddof=0) if stat == "std" else getattr(roll, stat)()).to_numpy()


def _use_previous_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features, "_rolling_columns", _pandas_rolling)
    monkeypatch.setattr(features, "_sensor_matrix", lambda df, s: df[s].to_numpy(dtype=np.float64, copy=True))
    monkeypatch.setattr(
        features, "_epoch_ns", lambda ts: pd.to_datetime(ts).to_numpy(dtype="datetime64[ns]").astype(np.int64)
    )
    monkeypatch.setattr(model, "_iforest_score_samples", lambda forest, X: forest.score_samples(X))
    monkeypatch.setattr(model, "_pca_transform", lambda pca, X: pca.transform(X))
    monkeypatch.setattr(model, "_squared_mahalanobis", lambda cov, X: cov.mahalanobis(X))
    monkeypatch.setattr(model, "_plain_float_matrix", lambda est, X, allow_nan: None)

    def pandas_order(frame: pd.DataFrame) -> tuple[np.ndarray, None]:
        keys = frame[[schema.ASSET, schema.TIMESTAMP]].reset_index(drop=True)
        return keys.sort_values([schema.ASSET, schema.TIMESTAMP], kind="stable").index.to_numpy(), None

    monkeypatch.setattr(scoring, "_canonical_order", pandas_order)


# --------------------------------------------------------------------------------------------
# fixtures: bundles from the pipeline's own fit_final (the service tests' helpers), random frames
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, DetectorBundle], pd.DataFrame]:
    root = make_project(tmp_path_factory.mktemp("fast-paths") / "proj")
    paths, validation = train_bundles(root)
    return {kind: load_bundle(path) for kind, path in paths.items()}, validation


def random_frame(validation: pd.DataFrame, sensors: list[str], n: int, seed: int,
                 new_asset: bool = True) -> pd.DataFrame:
    """n readings drawn from the validation period, shuffled, ~10 % missing values, perturbed values;
    with ``new_asset`` about a third of them relabelled as an asset the model never saw."""
    rng = np.random.default_rng(seed)
    frame = validation.sample(n, random_state=seed)[[schema.TIMESTAMP, schema.ASSET, *sensors]]
    frame = frame.reset_index(drop=True)
    values = frame[sensors].to_numpy() * rng.normal(1.0, 0.05, size=(n, len(sensors)))
    values[rng.random(values.shape) < 0.1] = np.nan
    frame[sensors] = values
    if new_asset and n > 1:
        frame.loc[rng.random(n) < 0.33, schema.ASSET] = NEW_ASSET
        frame = frame.drop_duplicates([schema.ASSET, schema.TIMESTAMP]).reset_index(drop=True)
    frame.index = pd.RangeIndex(100, 100 + len(frame))  # a non-default index must survive
    return frame


def _assert_same_scored(fast: pd.DataFrame, slow: pd.DataFrame) -> None:
    assert list(fast.columns) == list(slow.columns)
    assert fast.index.equals(slow.index)
    np.testing.assert_allclose(fast["score"].to_numpy(), slow["score"].to_numpy(), rtol=0, atol=TOL)
    assert fast["decision"].tolist() == slow["decision"].tolist()
    assert fast["rules"].tolist() == slow["rules"].tolist()
    for a, b in zip(fast["top_sensors"], slow["top_sensors"], strict=True):
        assert [t["sensor"] for t in a] == [t["sensor"] for t in b]
        np.testing.assert_allclose([t["contribution"] for t in a], [t["contribution"] for t in b],
                                   rtol=0, atol=TOL)
    for col in fast.columns.difference(["score", "top_sensors", "rules", "decision"]):
        assert fast[col].tolist() == slow[col].tolist(), col


# --------------------------------------------------------------------------------------------
# end to end: bundle.score_frame and scoring.score_readings
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["custom", "baseline"])
@pytest.mark.parametrize("n", SIZES)
def test_score_frame_fast_equals_previous_path(bundles, kind: str, n: int, monkeypatch) -> None:
    found, validation = bundles
    bundle = found[kind]
    frame = random_frame(validation, bundle.sensors, n, seed=n)
    X_fast = bundle.features.transform(frame).to_numpy()
    fast = bundle.score_frame(frame)
    _use_previous_paths(monkeypatch)
    slow = bundle.score_frame(frame)
    np.testing.assert_array_equal(X_fast, bundle.features.transform(frame).to_numpy())
    _assert_same_scored(fast, slow)
    if kind == "custom":
        assert fast["top_sensors"].map(len).sum() > 0  # the attributions were really compared


@pytest.mark.parametrize("n", SIZES)
def test_score_readings_fast_equals_previous_path(bundles, n: int, monkeypatch) -> None:
    found, validation = bundles
    bundle = found["custom"]
    frame = random_frame(validation, bundle.sensors, n, seed=100 + n, new_asset=False)
    fast = scoring.score_readings(bundle, frame)
    _use_previous_paths(monkeypatch)
    slow = scoring.score_readings(bundle, frame)
    _assert_same_scored(fast, slow)
    assert fast[scoring.FULL_HISTORY].dtype == bool


def test_canonical_order_matches_pandas_sort() -> None:
    rng = np.random.default_rng(7)
    n = 500
    frame = pd.DataFrame({
        schema.ASSET: rng.choice(["b", "a", "c10", "c2"], size=n).astype(object),
        schema.TIMESTAMP: pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 50, n), unit="min"),
    })
    order, history = scoring._canonical_order(frame)
    expected = frame.reset_index(drop=True).sort_values([schema.ASSET, schema.TIMESTAMP], kind="stable")
    np.testing.assert_array_equal(order, expected.index.to_numpy())
    counts = expected.groupby(schema.ASSET, sort=False).cumcount().to_numpy() + 1
    np.testing.assert_array_equal(history, counts)
    # anything else (here: a missing timestamp) takes the pandas path and says so
    frame.loc[3, schema.TIMESTAMP] = pd.NaT
    assert scoring._canonical_order(frame)[1] is None


# --------------------------------------------------------------------------------------------
# the building blocks against the library calls they replace
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stat", ["mean", "std", "min", "max"])
@pytest.mark.parametrize("n", (0, *SIZES))
def test_rolling_columns_bit_identical_to_pandas(stat: str, n: int) -> None:
    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, 4)) * np.array([1.0, 1e3, 1e-3, 5.0])
    a[rng.random(a.shape) < 0.1] = np.nan
    if n:
        a[0, 3] = np.inf
    for window in (1, 5, 30, 120):
        fast = features._rolling_columns(a, window, stat)
        np.testing.assert_array_equal(fast, _pandas_rolling(a, window, stat))


@pytest.mark.parametrize("max_features", [1.0, 0.5])
@pytest.mark.parametrize("vector_walk", [True, False])
def test_forest_scores_equal_sklearn(max_features: float, vector_walk: bool, monkeypatch) -> None:
    rng = np.random.default_rng(3)
    forest = IsolationForest(n_estimators=30, max_features=max_features, random_state=0)
    forest.fit(rng.normal(size=(800, 9)).astype(np.float32))
    monkeypatch.setattr(model, "_VECTOR_WALK_MAX_PAIRS", 10**12 if vector_walk else 0)
    for n in SIZES:
        X = rng.normal(scale=2.0, size=(n, 9))
        X[rng.random(X.shape) < 0.1] = np.nan  # missing values follow sklearn's missing-value branch
        for dtype in (np.float32, np.float64):
            got = model._iforest_score_samples(forest, X.astype(dtype))
            np.testing.assert_allclose(got, forest.score_samples(X.astype(dtype)), rtol=0, atol=TOL)


def test_forest_table_is_built_once_and_never_stored(bundles) -> None:
    found, _ = bundles
    forest = found["custom"].detector.iforest_
    first = model._forest_table(forest)
    assert model._forest_table(forest) is first
    assert not any(isinstance(v, model._ForestTable) for v in vars(forest).values())
    assert not any(isinstance(v, model._ForestTable) for v in vars(found["custom"].detector).values())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_projection_and_mahalanobis_equal_sklearn(dtype: type) -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(size=(600, 7)).astype(dtype)
    pca = PCA(n_components=4, random_state=0).fit(z)
    cov = MinCovDet(random_state=0).fit(pca.transform(z))
    for n in SIZES:
        X = rng.normal(scale=3.0, size=(n, 7)).astype(dtype)
        proj = model._pca_transform(pca, X)
        np.testing.assert_allclose(proj, pca.transform(X), rtol=0, atol=TOL)
        dist = model._squared_mahalanobis(cov, proj)
        np.testing.assert_allclose(dist, cov.mahalanobis(proj), rtol=0, atol=TOL)


def test_plain_matrix_shortcut_keeps_sklearn_errors(bundles) -> None:
    found, _ = bundles
    det = found["custom"].detector
    width = det.n_features_in_
    with pytest.raises(ValueError, match="features"):
        det.anomaly_score(np.zeros((1, width + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN|infinity"):
        det.anomaly_score(np.full((2, width), np.nan, dtype=np.float32))
    baseline = found["baseline"].detector
    with pytest.raises(ValueError, match="infinity"):
        baseline.anomaly_score(np.full((1, baseline.n_features_in_), np.inf))
    # NaN is allowed for the baseline, as before
    assert np.isfinite(baseline.anomaly_score(np.full((1, baseline.n_features_in_), np.nan))).all()


def test_fast_paths_leave_the_bundle_file_unchanged(bundles, tmp_path: Path) -> None:
    """Scoring first (which builds the forest tables) must not add anything to a saved bundle."""
    import skops.io as sio

    from plantwatch.bundle import save_bundle

    found, validation = bundles
    bundle = found["custom"]
    bundle.score_frame(random_frame(validation, bundle.sensors, 5, seed=1))
    save_bundle(bundle, tmp_path / "b.skops")
    untrusted = sio.get_untrusted_types(file=tmp_path / "b.skops")
    assert all(t.startswith(("plantwatch.", "sklearn.", "numpy.", "scipy.", "builtins.")) for t in untrusted)
    assert not any("_ForestTable" in t for t in untrusted)
