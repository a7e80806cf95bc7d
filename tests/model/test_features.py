"""FeatureBuilder and time_split: causal, per-asset, exact under chunking, robust to bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from plantwatch import schema
from plantwatch.config.train import FeaturesConfig, SplitConfig
from plantwatch.errors import DataError
from plantwatch.features import FeatureBuilder, frame_sha256, time_split

SENSORS = ["a", "b", "c"]


def fleet(n: int = 200, assets: tuple[str, ...] = ("p1", "p2"), seed: int = 0) -> pd.DataFrame:
    """Canonical frame: per asset a load signal, b = 2 * load, c = -load + asset offset, plus noise."""
    rng = np.random.default_rng(seed)
    frames = []
    for k, asset in enumerate(assets):
        load = np.sin(np.arange(n) / 15.0) + rng.normal(0, 0.05, n)
        frames.append(
            pd.DataFrame(
                {
                    schema.TIMESTAMP: pd.date_range("2024-01-01", periods=n, freq="min"),
                    schema.ASSET: asset,
                    "a": load + 10 * k,
                    "b": 2 * load + rng.normal(0, 0.05, n) + 5 * k,
                    "c": -load + rng.normal(0, 0.05, n) - 3 * k,
                    schema.LABEL: 0,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def builder(**kw: object) -> FeatureBuilder:
    return FeatureBuilder(sensors=SENSORS, windows=(3, 10), **kw)


def test_output_shape_names_and_sensor_map() -> None:
    df = fleet()
    X = builder().fit(df).transform(df)
    fb = builder().fit(df)
    assert X.shape == (len(df), len(fb.feature_names_out_))
    assert list(X.columns) == list(fb.get_feature_names_out())
    assert X.index.equals(df.index)
    assert np.isfinite(X.to_numpy()).all()
    assert fb.feature_sensor_["b__std_10"] == "b" and fb.feature_sensor_["c__resid_mean_3"] == "c"
    assert set(fb.feature_sensor_) == set(fb.feature_names_out_)
    assert {"a__dev", "a__roc", "a__slope_3", "a__resid", "a__stuck", "a__missing"} <= set(X.columns)


def test_features_are_causal() -> None:
    """Changing a later reading never changes an earlier row's features (the service streams)."""
    df = fleet()
    fb = builder().fit(df)
    before = fb.transform(df)
    changed = df.copy()
    k = 120  # a row of asset p1
    changed.loc[k, "a"] += 50.0
    after = fb.transform(changed)
    p1 = (df[schema.ASSET] == "p1").to_numpy()
    earlier = p1 & (np.arange(len(df)) < k)
    pd.testing.assert_frame_equal(before[earlier], after[earlier])
    assert not np.allclose(before.loc[k].to_numpy(), after.loc[k].to_numpy())  # the change is seen


def test_assets_do_not_leak_into_each_other() -> None:
    df = fleet()
    fb = builder().fit(df)
    before = fb.transform(df)
    changed = df.copy()
    p2 = changed[schema.ASSET] == "p2"
    changed.loc[p2, SENSORS] = changed.loc[p2, SENSORS] * 3 + 7
    after = fb.transform(changed)
    p1 = ~p2.to_numpy()
    pd.testing.assert_frame_equal(before[p1], after[p1])
    assert not np.allclose(before[~p1].to_numpy(), after[~p1].to_numpy())


def test_row_order_of_input_does_not_matter() -> None:
    """Rows are ordered per asset by time inside; output keeps the caller's order and index."""
    df = fleet()
    fb = builder().fit(df)
    shuffled = df.sample(frac=1.0, random_state=3)
    pd.testing.assert_frame_equal(fb.transform(shuffled).loc[df.index], fb.transform(df))


def test_rolling_stats_match_a_per_asset_reference() -> None:
    df = fleet(n=60)
    fb = FeatureBuilder(sensors=SENSORS, windows=(7,), residuals=False).fit(df)
    X = fb.transform(df)
    scale = fb.asset_scale_["p2"][1]
    med = fb.asset_median_["p2"][1]
    z = (df.loc[df[schema.ASSET] == "p2", "b"] - med) / scale
    roll = z.rolling(7, min_periods=1)
    rows = z.index
    np.testing.assert_allclose(X.loc[rows, "b__mean_7"], roll.mean(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(X.loc[rows, "b__std_7"], roll.std(ddof=0).fillna(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(X.loc[rows, "b__min_7"], roll.min(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(X.loc[rows, "b__max_7"], roll.max(), rtol=1e-5, atol=1e-5)
    for i in (0, 3, 6, 40):  # partial windows at the asset's start, then full ones
        win = z.iloc[max(0, i - 6): i + 1].to_numpy()
        ref = np.polyfit(np.arange(len(win)), win, 1)[0] if len(win) > 1 else 0.0
        assert X.loc[rows[i], "b__slope_7"] == pytest.approx(ref, abs=1e-4)
    np.testing.assert_allclose(X.loc[rows, "b__roc"].iloc[1:], np.diff(z.to_numpy()), atol=1e-5)
    assert X.loc[rows[0], "b__roc"] == 0.0  # no predecessor: the previous asset is not one


def test_window_is_exactly_the_history_needed() -> None:
    """With window_ readings of history the tail's features equal the full stream's; with one less
    they do not (window_ is what chunked scoring prepends, so it must be exact, not a guess)."""
    df = fleet(n=400)
    fb = builder(stuck_cap=5).fit(df)
    assert fb.window_ == 2 * 10 - 1  # a trailing mean of residuals that use trailing means
    full = fb.transform(df)
    p1 = df[df[schema.ASSET] == "p1"]
    history = fb.window_ - 1  # readings before the first scored one
    got = fb.transform(p1.iloc[-50 - history:]).iloc[history:]
    np.testing.assert_allclose(got.to_numpy(), full.loc[got.index].to_numpy(), rtol=1e-4, atol=1e-4)
    short = fb.transform(p1.iloc[-50 - history + 1:]).iloc[history - 1:]
    assert not np.allclose(short.iloc[0].to_numpy(), full.loc[short.index[0]].to_numpy(), atol=1e-4)


def test_short_frames_and_single_readings_work() -> None:
    df = fleet()
    fb = builder().fit(df)
    for n in (1, 3):
        X = fb.transform(df.iloc[:n])
        assert X.shape == (n, len(fb.feature_names_out_))
        assert np.isfinite(X.to_numpy()).all()


def test_unknown_asset_uses_the_fleet_baseline() -> None:
    df = fleet()
    fb = builder().fit(df)
    new = df[df[schema.ASSET] == "p1"].iloc[:5].assign(**{schema.ASSET: "never-seen"})
    X = fb.transform(new)
    expected = (new["a"] - fb.fleet_median_[0]) / fb.fleet_scale_[0]
    np.testing.assert_allclose(X["a__dev"], expected, rtol=1e-5)


def test_missing_readings_are_imputed_and_flagged() -> None:
    df = fleet()
    fb = builder().fit(df)
    holed = df.copy()
    holed.loc[50, "b"] = np.nan
    holed.loc[51, "c"] = np.inf
    X = fb.transform(holed)
    assert np.isfinite(X.to_numpy()).all()
    assert X.loc[50, "b__missing"] == 1.0 and X.loc[51, "c__missing"] == 1.0
    assert X.loc[50, "b__dev"] == 0.0  # imputed with the asset median
    assert X["b__missing"].sum() == 1.0


def test_stuck_run_length_grows_and_is_capped() -> None:
    df = fleet()
    fb = builder(stuck_cap=10).fit(df)
    stuck = df.copy()
    stuck.loc[100:140, "a"] = stuck.loc[100, "a"]
    X = fb.transform(stuck)
    assert X.loc[99, "a__stuck"] == 0.0
    assert X.loc[105, "a__stuck"] == pytest.approx(0.5)
    assert X.loc[130, "a__stuck"] == 1.0
    assert X.loc[141, "a__stuck"] == 0.0


def test_residual_flags_a_broken_relation_that_levels_do_not() -> None:
    """b = 2 * a in training; b drifting off that line within its normal range shows in b__resid."""
    df = fleet(n=600)
    fb = builder().fit(df)
    broken = df.copy()
    rows = broken.index[(broken[schema.ASSET] == "p1") & (broken.index >= 300) & (broken.index < 320)]
    broken.loc[rows, "b"] = -broken.loc[rows, "b"]  # in range, but wrong for the load
    X = fb.transform(broken)
    normal = fb.transform(df)
    assert X.loc[rows, "b__resid"].abs().median() > 5 * normal["b__resid"].abs().quantile(0.99)


def test_single_asset_frame_without_asset_column() -> None:
    df = fleet(assets=("p1",)).drop(columns=[schema.ASSET])
    fb = builder(default_asset="only").fit(df)
    assert list(fb.asset_median_) == ["only"]
    assert np.isfinite(fb.transform(df).to_numpy()).all()


def test_univariate_has_no_residuals() -> None:
    df = fleet()[[schema.TIMESTAMP, schema.ASSET, "a"]]
    fb = FeatureBuilder(sensors=["a"], windows=(5,)).fit(df)
    assert not any("resid" in n for n in fb.feature_names_out_)


def test_raw_mode_gives_imputed_sensor_columns() -> None:
    df = fleet()
    holed = df.copy()
    holed.loc[3, "a"] = np.nan
    fb = builder(raw=True).fit(df)
    X = fb.transform(holed)
    assert list(X.columns) == SENSORS
    assert X.loc[3, "a"] == pytest.approx(fb.asset_median_["p1"][0])
    np.testing.assert_array_equal(X.loc[4:, SENSORS].to_numpy(), df.loc[4:, SENSORS].to_numpy())


def test_from_config_follows_params() -> None:
    cfg = FeaturesConfig(windows=[4, 9], stats=["mean", "max"], residuals=False, stuck_cap=12)
    fb = FeatureBuilder.from_config(cfg, SENSORS, default_asset="x").fit(fleet())
    assert fb.window_ == 12
    assert "a__max_9" in fb.feature_names_out_ and "a__std_9" not in fb.feature_names_out_


def test_bad_input_is_a_clear_error() -> None:
    fb = builder().fit(fleet())
    with pytest.raises(DataError, match="lacks sensor column"):
        fb.transform(fleet().drop(columns=["b"]))
    with pytest.raises(DataError, match="numeric"):
        fb.transform(fleet().assign(a="x"))
    with pytest.raises(DataError, match="empty"):
        builder().fit(fleet().iloc[:0])


# -------------------------------------------------------------------------------------------- split


def test_time_split_parts_are_disjoint_and_holdout_is_most_recent() -> None:
    df = fleet(n=500, assets=("p1", "p2", "p3"))
    split = time_split(df, SplitConfig(validation_fraction=0.2, holdout_fraction=0.2))
    idx = [set(p.index) for p in (split.train, split.validation, split.holdout)]
    assert not (idx[0] & idx[1] or idx[0] & idx[2] or idx[1] & idx[2])
    assert sum(map(len, idx)) == len(df)
    ts = schema.TIMESTAMP
    assert split.train[ts].max() < split.validation[ts].min() <= split.validation[ts].max()
    assert split.validation[ts].max() < split.holdout[ts].min() == split.holdout_start
    assert set(split.holdout[schema.ASSET]) == {"p1", "p2", "p3"}  # one cut time for the whole fleet
    assert len(split.holdout) == pytest.approx(0.2 * len(df), rel=0.05)
    assert split.boundaries()["rows"] == {"train": len(idx[0]), "validation": len(idx[1]),
                                          "holdout": len(idx[2])}


def test_time_split_with_official_train_rows() -> None:
    df = fleet(n=1000, assets=("p1",))
    split = time_split(df, SplitConfig(validation_fraction=0.2, holdout_fraction=0.2), train_rows=400)
    assert list(split.train.index) == list(range(400))
    assert len(split.validation) == 300 and len(split.holdout) == 300  # labelled rest shared 1:1
    assert split.holdout.index.min() == 700 and split.validation.index.max() == 699


def test_holdout_fingerprint_is_stable_and_sensitive() -> None:
    df = fleet(n=300)
    cfg = SplitConfig()
    a, b = time_split(df, cfg), time_split(df.copy(), cfg)
    assert a.holdout_sha256 == b.holdout_sha256 == frame_sha256(a.holdout.reset_index(drop=True))
    changed = df.copy()
    changed.loc[changed.index[-1], "a"] += 1e-9
    assert time_split(changed, cfg).holdout_sha256 != a.holdout_sha256


def test_time_split_rejects_unusable_input() -> None:
    with pytest.raises(DataError, match="timestamp"):
        time_split(fleet().drop(columns=[schema.TIMESTAMP]), SplitConfig())
    with pytest.raises(DataError, match="train_rows"):
        time_split(fleet(n=10, assets=("p1",)), SplitConfig(), train_rows=10)
    with pytest.raises(DataError, match="leave rows for training"):
        time_split(fleet(), SplitConfig(validation_fraction=0.6, holdout_fraction=0.5))
