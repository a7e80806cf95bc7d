"""End to end: borderline readings → review queue → verdicts → the next training run uses them.

The stages run in-process through the same shells the CLI and DVC call (features → train →
evaluate → gate), on a small seeded fleet, so the test exercises the real merge, recalibration and
gate report rather than a stand-in.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from plantwatch import gating, scoring, training
from plantwatch.bundle import load_bundle
from plantwatch.config import load_params
from plantwatch.paths import ProjectPaths
from plantwatch.review import ReviewQueue, candidates_from_scored
from plantwatch.simulate import simulate_fleet

#: Small but CV-able: 3 pumps x 10 days, the minimum of 5 folds, no grid.
ASSETS, DAYS, FOLDS = 3, 10, 5


def _small_params(project: Path) -> None:
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"]["cv_folds"] = FOLDS
    raw["train"]["model"]["grid"] = {}
    raw["scale"]["local_workers"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def _run_training(paths: ProjectPaths) -> dict:
    params = load_params(paths.params)
    training.features_stage(paths, params)
    training.train_stage(paths, params)
    gating.evaluate_stage(paths, params)
    try:
        gating.gate_stage(paths, params)
    except Exception:  # noqa: BLE001 - a failed gate still writes gates.json, which is what we read
        pass
    return json.loads((paths.metrics / "gates.json").read_text())


@pytest.mark.slow
def test_borderline_readings_become_labels_that_the_next_training_run_uses(project: Path) -> None:
    _small_params(project)
    paths = ProjectPaths.at(project)
    params = load_params(paths.params)
    fleet = simulate_fleet(params.simulate, params.data, assets=ASSETS, days=DAYS)
    paths.processed.mkdir(parents=True)
    fleet.to_parquet(paths.processed / "clean.parquet", index=False)

    first = _run_training(paths)
    assert first["review_labels_used"] == 0 and "review_effect" not in first

    # The trained custom model scores the holdout; its review band and alerts go to the queue.
    bundle = load_bundle(paths.models / "custom.skops")
    holdout = pd.read_parquet(paths.processed / "holdout.parquet")
    scored = scoring.score_readings(bundle, holdout)
    queue = ReviewQueue.for_project(paths, params.review)
    items = candidates_from_scored(
        pd.concat([holdout.reset_index(drop=True), scored.reset_index(drop=True)], axis=1),
        model_version="v-test", threshold=bundle.threshold_, sensors=params.data.sensor_names,
    )
    assert items, "the model flagged nothing to review"
    ids = queue.enqueue(items)

    # A reviewer knows the truth (the simulator's labels): confirm real faults, reject false alarms.
    truth = holdout.set_index(["asset", "timestamp"])["label"]
    flipped_false_alarm = 0
    for item_id in ids:
        item = queue.get(item_id)
        actual = int(truth.loc[(item.asset, pd.Timestamp(item.timestamp))])
        queue.label(item_id, "anomaly" if actual else "normal", by="reviewer")
    # ... and finds one fault the source missed: the normal-labelled holdout row the chosen model
    # ranks LOWEST becomes an anomaly (a positive at the bottom of the ranking can only lower PR-AUC).
    ranked = pd.read_parquet(paths.metrics / gating.HOLDOUT_SCORES)
    normal = ranked[ranked["label"] == 0]
    missed = normal.loc[normal[f"score_{first['chosen']}"].idxmin()]
    queue.label_reading(missed["asset"], missed["timestamp"], "anomaly", by="reviewer")
    flipped_false_alarm += 1

    second = _run_training(paths)
    assert second["review_labels_used"] == len(ids) + 1
    effect = second["review_effect"]
    # Only the missed fault changed a label (the other verdicts agreed with the source) ...
    assert effect["rows_relabelled"] == flipped_false_alarm
    # ... and it moved the metric the way it must: down, the same scores now miss one more fault.
    assert second["chosen"] == first["chosen"]
    assert effect["pr_auc_reviewed_labels"] < effect["pr_auc_source_labels"]
    report = (paths.reports / "gates.md").read_text()
    assert f"Reviewed labels used: {len(ids) + 1}" in report
    assert f"moved {second['chosen']}'s holdout PR-AUC" in report
    relabelled = pd.read_parquet(paths.processed / "holdout.parquet")
    same = (relabelled["asset"] == missed["asset"]) & (relabelled["timestamp"] == missed["timestamp"])
    hit = relabelled[same]
    assert hit["label"].tolist() == [1] and hit["source_label"].tolist() == [0]
