"""Train-stage plumbing: CV folds, the hyperparameter grid, provenance, the features stage's files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plantwatch import training
from plantwatch.config import load_params
from plantwatch.errors import DataError
from plantwatch.paths import ProjectPaths
from plantwatch.simulate import simulate_fleet


def _timestamps(n_assets: int, n: int) -> pd.Series:
    one = pd.date_range("2024-01-01", periods=n, freq="min")
    return pd.Series(np.tile(one.values, n_assets))


def test_folds_are_expanding_ordered_and_disjoint() -> None:
    ts = _timestamps(3, 1000)
    folds = training.make_folds(ts, n_folds=5, min_train_fraction=0.5)
    assert len(folds) == 5
    frame = pd.DataFrame({"timestamp": ts, "asset": np.repeat(["a", "b", "c"], 1000)})
    previous_test_end = None
    for fold in folds:
        fit, cal, test = fold.parts(frame)
        assert fit["timestamp"].max() < cal["timestamp"].min()
        assert cal["timestamp"].max() < test["timestamp"].min()
        assert len(cal) == len(test) or fold.index == 4  # the last block takes the remainder
        if previous_test_end is not None:
            assert fold.test_start == previous_test_end  # test blocks tile the period after the history
        previous_test_end = fold.test_end
    assert folds[0].test_start == pd.Timestamp("2024-01-01") + pd.Timedelta(minutes=500)
    assert folds[-1].test_end > ts.max()  # the last reading is in the last block
    sizes = [len(f.parts(frame)[0]) for f in folds]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]  # expanding window


def test_official_training_part_is_history_only() -> None:
    ts = _timestamps(1, 1000)
    folds = training.make_folds(ts, n_folds=5, min_train_fraction=0.1, min_train_rows=800)
    assert folds[0].test_start == pd.Timestamp("2024-01-01") + pd.Timedelta(minutes=800)


def test_too_little_data_for_the_folds_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="cannot make 5 CV folds"):
        training.make_folds(_timestamps(1, 8), n_folds=5, min_train_fraction=0.5)


def test_grid_points(repo_root: Path) -> None:
    train = load_params(repo_root / "params.yaml").train
    empty = train.model_copy(update={"model": train.model.model_copy(update={"grid": {}})})
    assert training.grid_points(empty) == [{}]
    grid = {"top_k": [1, 3], "combine": ["mean", "max"]}
    two = train.model_copy(update={"model": train.model.model_copy(update={"grid": grid})})
    assert training.grid_points(two) == [
        {"top_k": 1, "combine": "mean"}, {"top_k": 1, "combine": "max"},
        {"top_k": 3, "combine": "mean"}, {"top_k": 3, "combine": "max"}]


def test_provenance_helpers(tmp_path: Path, repo_root: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"plantwatch" * 1000)
    assert training.file_md5(f) == hashlib.md5(f.read_bytes()).hexdigest()
    assert training.git_commit(tmp_path) == "unknown"
    params = load_params(repo_root / "params.yaml")
    h = training.params_hash(params, training.TRAIN_PARAM_BLOCKS)
    assert h == training.params_hash(params, training.TRAIN_PARAM_BLOCKS) and len(h) == 64
    budget = params.model_copy(update={"train": params.train.model_copy(update={"alert_budget": 2.0})})
    assert training.params_hash(budget, training.TRAIN_PARAM_BLOCKS) != h
    serve = params.model_copy(update={"serve": params.serve.model_copy(update={"port": 1})})
    assert training.params_hash(serve, training.TRAIN_PARAM_BLOCKS) == h  # not a training block


def test_features_stage_merges_reviewed_labels(project: Path) -> None:
    from plantwatch.review import ReviewQueue

    paths, params = ProjectPaths.at(project), load_params(project / "params.yaml")
    frame = simulate_fleet(params.simulate, params.data, assets=2, days=1, seed=1)
    paths.processed.mkdir(parents=True)
    frame.to_parquet(paths.processed / "clean.parquet", index=False)
    assert training.features_stage(paths, params)["review_labels_used"] == 0  # no queue yet

    last = frame.iloc[-1]  # the newest reading lands in the holdout; say it was an anomaly
    queue = ReviewQueue.for_project(paths, params.review)
    [item] = queue.enqueue([{"asset": last["asset"], "timestamp": last["timestamp"], "decision": "review"}])
    queue.label(item, "anomaly", by="tester")
    info = training.features_stage(paths, params)
    assert info["review_labels_used"] == 1
    holdout = pd.read_parquet(paths.processed / "holdout.parquet")
    hit = holdout[(holdout["asset"] == last["asset"]) & (holdout["timestamp"] == last["timestamp"])]
    assert hit["label"].tolist() == [1] and hit["label_source"].tolist() == ["review"]
    assert hit["source_label"].tolist() == [int(last["label"])]  # the source's own label is kept
    written = json.loads((paths.processed / "split.json").read_text())
    on_disk = {k: len(pd.read_parquet(paths.processed / f"{k}.parquet")) for k in training.PARTS}
    assert written["rows"] == on_disk
    assert sum(written["rows"].values()) == len(frame)
    assert written["source_md5"] == training.file_md5(paths.processed / "clean.parquet")


def test_features_stage_without_clean_data_says_what_to_run(project: Path) -> None:
    with pytest.raises(DataError, match="run `plantwatch validate` first"):
        training.features_stage(ProjectPaths.at(project), load_params(project / "params.yaml"))


def test_review_effect_says_how_reviewed_labels_moved_pr_auc() -> None:
    from plantwatch.gating import review_effect

    scores = np.array([0.9, 0.8, 0.2, 0.1, 0.05])
    source = np.array([1, 0, 0, 0, 0])
    reviewed = np.array([1, 1, 0, 0, 0])  # a reviewer confirmed the second-highest score
    effect = review_effect(source, reviewed, scores)
    assert effect["rows_relabelled"] == 1
    assert effect["pr_auc_source_labels"] == pytest.approx(1.0)
    assert effect["pr_auc_reviewed_labels"] == pytest.approx(1.0)
    worse = review_effect(source, np.array([1, 0, 0, 0, 1]), scores)  # a missed anomaly found by review
    assert worse["pr_auc_reviewed_labels"] < worse["pr_auc_source_labels"]
    assert np.isnan(review_effect(np.zeros(5), np.zeros(5), scores)["pr_auc_source_labels"])


def test_operating_point_aims_at_the_headroom_share_of_the_budget(repo_root: Path) -> None:
    """Validation false alarms stay within headroom x budget; less headroom never lowers the threshold."""
    params = load_params(repo_root / "params.yaml")
    rng = np.random.default_rng(0)
    n, assets = 4 * 1440, 2
    frame = pd.DataFrame({
        "timestamp": np.tile(pd.date_range("2024-01-01", periods=n, freq="min"), assets),
        "asset": np.repeat([f"a{i}" for i in range(assets)], n),
        "label": 0,
    })  # fmt: skip
    scores = rng.standard_normal(len(frame))
    points = {}
    for headroom in (1.0, 0.8, 0.5):
        train_cfg = params.train.model_copy(update={"calibration_headroom": headroom})
        s = training.Settings(data=params.data, features=params.features, train=train_cfg, rules=params.rules)
        points[headroom] = training._operating_point(scores, frame, s)
        assert points[headroom]["false_alarms_per_asset_day"] <= headroom * params.train.alert_budget
    assert points[1.0]["threshold"] <= points[0.8]["threshold"] <= points[0.5]["threshold"]
    assert points[1.0]["false_alarms_per_asset_day"] > points[0.5]["false_alarms_per_asset_day"]
