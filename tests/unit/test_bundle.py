"""DetectorBundle: chunked featurising is exact, skops round trip is restricted, score_frame decides."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio

from plantwatch.bundle import DetectorBundle, feature_matrix, load_bundle, save_bundle
from plantwatch.config import RulesConfig, load_params
from plantwatch.features import FeatureBuilder
from plantwatch.model import BaselineDetector, EnsembleDetector
from plantwatch.rules import rules_from_config
from plantwatch.simulate import simulate_fleet

ALLOWED = ("plantwatch.", "sklearn.", "numpy.", "scipy.", "builtins.")


@pytest.fixture(scope="module")
def fleet(repo_root: Path) -> tuple[object, pd.DataFrame]:
    params = load_params(repo_root / "params.yaml")
    return params, simulate_fleet(params.simulate, params.data, assets=2, days=1.5, seed=3)


def _bundle(params, frame: pd.DataFrame, kind: str, rules: RulesConfig | None = None) -> DetectorBundle:
    sensors = params.data.sensor_names
    fb = FeatureBuilder.from_config(params.features, sensors, raw=kind == "baseline").fit(frame)
    det = (BaselineDetector(random_state=0) if kind == "baseline"
           else EnsembleDetector(random_state=0, n_estimators=20, max_fit_rows=2000, mcd_max_rows=300))
    det.fit(feature_matrix(fb, frame))
    scores = det.anomaly_score(feature_matrix(fb, frame))
    threshold, low = np.quantile(scores, [0.99, 0.95])
    return DetectorBundle(kind=kind, sensors=sensors, assets=sorted(frame["asset"].unique()), features=fb,
                          detector=det, threshold_=threshold, review_low_=low,
                          rules=rules_from_config(rules or params.rules, params.data))


@pytest.mark.parametrize("chunk", [31, 500, 10**6])
def test_chunked_features_equal_whole_frame(fleet, chunk: int) -> None:
    params, frame = fleet
    fb = FeatureBuilder.from_config(params.features, params.data.sensor_names).fit(frame)
    shuffled = frame.sample(frac=1.0, random_state=1)  # any row order in, same order out
    whole = fb.transform(shuffled).to_numpy(dtype=np.float32)
    np.testing.assert_allclose(feature_matrix(fb, shuffled, chunk_rows=chunk), whole, atol=1e-5)
    keep = (shuffled["label"] == 0).to_numpy()
    kept = feature_matrix(fb, shuffled, keep=keep, chunk_rows=chunk)
    np.testing.assert_allclose(kept, whole[keep], atol=1e-5)


def test_context_removes_cold_start(fleet) -> None:
    params, frame = fleet
    bundle = _bundle(params, frame, "custom")
    cut = frame["timestamp"].min() + pd.Timedelta(hours=20)
    before, after = frame[frame["timestamp"] < cut], frame[frame["timestamp"] >= cut]
    full = pd.Series(bundle.anomaly_score(frame), index=frame.index)
    with_history = bundle.anomaly_score(after, context=before)
    np.testing.assert_allclose(with_history, full.loc[after.index].to_numpy(), rtol=1e-6, atol=1e-6)
    cold = bundle.anomaly_score(after)
    assert not np.allclose(cold, with_history)  # without history the first windows differ
    # readings at or after the period's start are never history, even if the context holds them
    np.testing.assert_array_equal(bundle.anomaly_score(after, context=frame), with_history)


def test_skops_round_trip_only_trusted_types(fleet, tmp_path: Path) -> None:
    params, frame = fleet
    for kind in ("baseline", "custom"):
        bundle = _bundle(params, frame, kind)
        path = tmp_path / f"{kind}.skops"
        save_bundle(bundle, path)
        untrusted = sio.get_untrusted_types(file=path)
        assert untrusted and all(t.startswith(ALLOWED) for t in untrusted), untrusted
        loaded = load_bundle(path)
        np.testing.assert_array_equal(loaded.anomaly_score(frame), bundle.anomaly_score(frame))
        assert (loaded.threshold_, loaded.review_low_, loaded.window_) == (
            bundle.threshold_, bundle.review_low_, bundle.window_)


def test_score_frame_decisions_rules_and_top_sensors(fleet) -> None:
    params, frame = fleet
    bundle = _bundle(params, frame, "custom")
    batch = frame.iloc[:300].copy()
    batch.index = batch.index + 1000  # index is kept
    batch.loc[batch.index[10], "temperature"] = 999.0  # beyond the physical limit
    batch.loc[batch.index[20], "vibration"] = np.nan  # missing reading
    out = bundle.score_frame(batch)
    assert list(out.columns) == ["score", "decision", "rules", "top_sensors"]
    assert out.index.equals(batch.index) and len(out) == len(batch)
    assert np.isfinite(out["score"]).all()
    row10, row20 = out.iloc[10], out.iloc[20]
    assert row10["decision"] == "alert" and "limit:temperature" in row10["rules"]
    assert row20["decision"] in ("review", "alert") and "missing:vibration" in row20["rules"]
    plain = out[out["rules"].map(len) == 0]
    expected = np.where(plain["score"] >= bundle.threshold_, "alert",
                        np.where(plain["score"] >= bundle.review_low_, "review", "normal"))
    assert (plain["decision"].to_numpy() == expected).all()
    tops = out.iloc[10]["top_sensors"]
    assert 1 <= len(tops) <= 3 and tops[0]["sensor"] == "temperature"
    assert [t["contribution"] for t in tops] == sorted((t["contribution"] for t in tops), reverse=True)


def test_score_frame_survives_a_missing_sensor_column(fleet) -> None:
    params, frame = fleet
    bundle = _bundle(params, frame, "custom")
    out = bundle.score_frame(frame.iloc[:50].drop(columns=["rpm"]))
    assert all("missing:rpm" in r for r in out["rules"]) and set(out["decision"]) <= {"review", "alert"}


def test_suppression_travels_with_the_bundle(fleet) -> None:
    params, frame = fleet
    asset = frame["asset"].iloc[0]
    bundle = _bundle(params, frame, "custom", RulesConfig(suppress_assets=[asset]))
    batch = frame.iloc[:100].copy()
    batch["temperature"] = 999.0
    out = bundle.score_frame(batch)
    assert (out["decision"] == "normal").all() and all("suppressed:asset" in r for r in out["rules"])


def test_baseline_without_attributions_names_no_sensor(fleet) -> None:
    params, frame = fleet
    out = _bundle(params, frame, "baseline").score_frame(frame.iloc[:20])
    assert all(isinstance(t, list) for t in out["top_sensors"])
    assert all(t["contribution"] > 0 for ts in out["top_sensors"] for t in ts)
    assert not math.isnan(out["score"].sum())
