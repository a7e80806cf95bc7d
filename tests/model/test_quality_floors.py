"""The figure that matters: the custom model beats the off-the-shelf baseline on holdout PR-AUC.

Same recipe as the train stage and bench/model_quality.py (``fit_candidate``: features fitted on
the training part's normal rows, detector on their features, holdout scored with its history), and
once through the train stage's own cores (time-ordered CV over ``train.model.grid``, final fit,
alert threshold from the budget) on NAB, where the custom model used to lose to the baseline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from plantwatch import schema, training
from plantwatch.config import DataConfig, Params, load_params
from plantwatch.evaluation import frame_arrays, score_metrics
from plantwatch.features import time_split
from plantwatch.ingest import concat_canonical, normalise, read_source, read_table
from plantwatch.model import fit_candidate, score_rows
from plantwatch.simulate import simulate_fleet
from plantwatch.validation import validate_frame

#: The custom model must beat the default IsolationForest by at least this much on simulator data.
MIN_GAIN_SIM = 0.15
#: ... and reach at least this holdout PR-AUC there (seed 42: about 0.68; 9 seeds: 0.22 to 0.72).
MIN_PR_AUC_SIM = 0.5
SIM_SEED = 42


@pytest.fixture(scope="module")
def params(repo_root: Path) -> Params:
    return load_params(repo_root / "params.yaml")


def holdout_pr_auc(frame: pd.DataFrame, params: Params, data: DataConfig) -> dict[str, float]:
    split = time_split(frame, params.split, train_rows=data.train_rows)
    history = pd.concat([split.train, split.validation, split.holdout])
    in_holdout = np.r_[np.zeros(len(history) - len(split.holdout), bool), np.ones(len(split.holdout), bool)]
    out = {}
    for kind in ("baseline", "custom"):
        fb, det = fit_candidate(kind, split.train, params.features, params.train.model, data.sensor_names,
                                default_asset=data.default_asset, seed=params.train.seed,
                                fit_on_normal=params.train.fit_on_normal)
        scores = score_rows(fb, det, history, in_holdout)
        out[kind] = average_precision_score(split.holdout[schema.LABEL].to_numpy(), scores)
    return out


def test_custom_beats_baseline_on_simulated_fleet(params: Params) -> None:
    frame = simulate_fleet(params.simulate, params.data, seed=SIM_SEED)
    assert frame[schema.LABEL].sum() > 0
    result = holdout_pr_auc(frame, params, params.data)
    assert result["custom"] >= MIN_PR_AUC_SIM, result
    assert result["custom"] >= result["baseline"] + MIN_GAIN_SIM, result


def test_custom_no_worse_than_baseline_on_real_data(datasets_dir: Path, params: Params) -> None:
    """ASD omi-1 (12,960 rows x 19 metrics): fit on the official training part, holdout = the latest
    part of the labelled rest."""
    meta = json.loads((datasets_dir / "asd_omi-1.meta.json").read_text())
    path = datasets_dir / meta["file"]
    data = DataConfig(sources=[str(path)], sensors=meta["sensor_columns"], asset_column=None,
                      label_column="label", train_rows=meta["n_train_rows"])
    frame = normalise(read_table(path), data)
    result = holdout_pr_auc(frame, params, data)
    assert result["custom"] >= result["baseline"], result


@pytest.mark.slow
def test_custom_no_worse_than_baseline_on_nab_through_the_train_stage(
    repo_root: Path, datasets_dir: Path
) -> None:
    """NAB machine temperature with params/nab.yaml, through the pipeline's cores: ingest + validation,
    time split, ``train_candidates`` (CV on train+validation only picks ``train.model.grid``; the
    holdout is not even an argument), holdout scored with the validation period as history.

    With the robust-covariance member always on (no ``w_covariance`` in the grid) the custom model
    lost here, 0.81 vs 0.97 PR-AUC: this fails if CV can no longer switch a harmful member off.
    """
    params = load_params(repo_root / "params" / "nab.yaml")
    assert 0.0 in params.train.model.grid.get("w_covariance", []), "CV must be able to drop the member"
    source = datasets_dir / "nab_machine_temperature.csv.gz"
    data = params.data.model_copy(update={"sources": [str(source)]})
    clean = validate_frame(concat_canonical([read_source(source, data)], data), data, params.validate_).clean
    split, _ = training.prepare_split(clean, params.split, train_rows=data.train_rows)
    settings = training.Settings(data=data, features=params.features, train=params.train, rules=params.rules)
    result = training.train_candidates(split.train, split.validation, settings, params.scale)
    labels, assets, ts = frame_arrays(split.holdout)
    assert labels.sum() > 0
    metrics = {}
    for kind, bundle in result.bundles.items():
        scores = bundle.anomaly_score(split.holdout, context=split.validation)
        metrics[kind] = score_metrics(labels, scores, assets, ts, bundle.threshold_, params.train.episode_gap)
    custom, baseline = metrics["custom"], metrics["baseline"]
    assert custom["pr_auc"] >= baseline["pr_auc"], metrics
    assert custom["event_recall"] >= baseline["event_recall"], metrics
    assert custom["false_alarms_per_asset_day"] <= params.train.alert_budget, metrics
