"""Model-quality gates on small seeded fleets: a good model passes, a poisoned one is refused.

Also: no holdout row ever reaches training, the same seed gives the same scores, the pilot rule and
the non-inferiority gate decide as documented, a holdout with too few fault episodes gives the
verdict "insufficient evidence" (its gates not judged), and a failed gate is one line + exit code 1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from plantwatch import gating, training
from plantwatch.bundle import feature_matrix
from plantwatch.config import GatesConfig, Params, load_params
from plantwatch.evaluation import METRIC_KEYS, frame_arrays
from plantwatch.features import FeatureBuilder, Split
from plantwatch.simulate import simulate_fleet

#: Small but not trivial: 3 pumps x 14 days at 1-minute readings (the CV's first fold needs more
#: than a week of history: the plant has a weekly cycle), 6 % anomalous so every fold has episodes
#: and the holdout holds 6 independent fault episodes (>= gates.min_holdout_episodes: judgeable).
FLEET = {"assets": 3, "days": 14.0, "anomaly_rate": 0.06}
#: Poisoned training data: every sensor reading corrupted by noise of 3x that sensor's spread.
POISON_NOISE = 3.0


def _params(repo_root: Path) -> Params:
    params = load_params(repo_root / "params.yaml")
    model = params.train.model.model_copy(update={"n_estimators": 50, "max_fit_rows": 5000,
                                                  "mcd_max_rows": 500, "grid": {}})
    train = params.train.model_copy(update={"model": model, "candidates": ["custom"]})
    sim = params.simulate.model_copy(update=FLEET)
    return params.model_copy(update={"train": train, "simulate": sim,
                                     "scale": params.scale.model_copy(update={"local_workers": 1})})


def _settings(p: Params) -> training.Settings:
    return training.Settings(data=p.data, features=p.features, train=p.train, rules=p.rules)


def _evaluate(p: Params, split: Split, train: pd.DataFrame) -> tuple[training.TrainResult, dict[str, Any]]:
    result = training.train_candidates(train, split.validation, _settings(p), p.scale)
    ev = gating.evaluate_candidates(result.bundles, split.holdout, split.validation, result.cv_scores,
                                    p.gates, p.train.episode_gap)
    return result, gating.decide(ev.holdout, ev.cv, p.gates, production=None, review_labels_used=0)


@pytest.fixture(scope="module")
def setup(repo_root: Path) -> tuple[Params, Split]:
    p = _params(repo_root)
    split, _ = training.prepare_split(simulate_fleet(p.simulate, p.data), p.split, gates=p.gates)
    return p, split


@pytest.fixture(scope="module")
def good(setup: tuple[Params, Split]) -> Iterator[dict[str, Any]]:
    """Train once on clean data, recording the latest timestamp any fitting or featurising saw."""
    p, split = setup
    seen: list[pd.Timestamp] = []
    real_fit, real_matrix = FeatureBuilder.fit, training.feature_matrix

    def spy_fit(self: FeatureBuilder, X: pd.DataFrame, y: object = None) -> FeatureBuilder:
        seen.append(pd.Timestamp(X["timestamp"].max()))
        return real_fit(self, X, y)

    def spy_matrix(features: Any, df: pd.DataFrame, context: pd.DataFrame | None = None, **kw: Any):
        seen.append(pd.Timestamp(df["timestamp"].max()))
        return real_matrix(features, df, context, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FeatureBuilder, "fit", spy_fit)
        mp.setattr(training, "feature_matrix", spy_matrix)
        result, decision = _evaluate(p, split, split.train)
    yield {"result": result, "decision": decision, "seen": seen}


@pytest.mark.slow
def test_good_model_passes_every_gate(good: dict[str, Any]) -> None:
    decision = good["decision"]
    assert decision["passed"] and decision["verdict"] == "passed", decision
    every = ["min_holdout_episodes", "min_pr_auc", "min_event_recall", "max_false_alarms_per_asset_day",
             "min_cv_ci_low", "max_cv_std", "non_inferiority_vs_production"]
    not_judged = [g["name"] for g in decision["not_judged"]]
    assert [g["name"] for g in decision["gates"]] == [n for n in every if n not in not_judged]
    # 3 pumps: the CV folds may hold too few episodes to judge stability; nothing else may be skipped
    assert decision["evidence"]["sufficient"] and not_judged in ([], list(gating.CV_GATES))
    assert bool(not_judged) == (not decision["cv_evidence"]["sufficient"])
    assert decision["evidence"]["holdout_fault_episodes"] >= GatesConfig().min_holdout_episodes
    assert "non-inferiority skipped: no model in production yet" in decision["notes"]


@pytest.mark.slow
def test_poisoned_model_is_refused(setup: tuple[Params, Split]) -> None:
    """Training readings buried in noise: the model learns a "normal" so wide that faults fit in."""
    p, split = setup
    rng = np.random.default_rng(0)
    poisoned = split.train.copy()
    for sensor in p.data.sensor_names:
        poisoned[sensor] += rng.normal(0.0, POISON_NOISE * poisoned[sensor].std(), len(poisoned))
    _, decision = _evaluate(p, split, poisoned)
    failed = [g["name"] for g in decision["gates"] if not g["passed"]]
    assert not decision["passed"] and {"min_pr_auc", "min_event_recall"} <= set(failed), decision


@pytest.mark.slow
def test_no_holdout_row_reaches_training(setup: tuple[Params, Split], good: dict[str, Any]) -> None:
    _, split = setup
    assert good["seen"], "the spies saw no call: the test would prove nothing"
    assert max(good["seen"]) < split.holdout_start
    assert split.train["timestamp"].max() < split.validation["timestamp"].min()
    assert split.validation["timestamp"].max() < split.holdout["timestamp"].min()
    info = good["result"].folds
    assert all(pd.Timestamp(f["test_end"]) <= split.holdout_start for f in info)


@pytest.mark.slow
def test_same_seed_same_scores(setup: tuple[Params, Split], good: dict[str, Any]) -> None:
    p, split = setup
    first = good["result"].bundles["custom"]
    again = training.fit_final("custom", {}, split.train, split.validation, _settings(p), first.assets)
    h = split.holdout
    np.testing.assert_array_equal(again.anomaly_score(h, context=split.validation),
                                  first.anomaly_score(h, context=split.validation))
    assert again.threshold_ == first.threshold_
    other = p.train.model_copy(update={"seed": p.train.seed + 1})
    reseeded = training.fit_final("custom", {}, split.train, split.validation,
                                  training.Settings(p.data, p.features, other, p.rules), first.assets)
    assert not np.array_equal(reseeded.anomaly_score(h.iloc[:500]), first.anomaly_score(h.iloc[:500]))


@pytest.mark.slow
def test_threshold_is_set_on_validation_within_budget(
    setup: tuple[Params, Split], good: dict[str, Any]
) -> None:
    p, split = setup
    bundle = good["result"].bundles["custom"]
    assert bundle.metadata["validation_false_alarms_per_asset_day"] <= p.train.alert_budget
    assert bundle.review_low_ < bundle.threshold_
    X = feature_matrix(bundle.features, split.validation, context=split.train)
    labels, _, _ = frame_arrays(split.validation)
    normal = bundle.detector.anomaly_score(X)[labels == 0]
    in_band = np.mean((normal >= bundle.review_low_) & (normal < bundle.threshold_))
    assert in_band == pytest.approx(p.train.review_band, abs=0.002)


# ---------------------------------------------------------------------------------------------------
# decision logic on hand-made metrics (fast)
# ---------------------------------------------------------------------------------------------------


def _metrics(pr_auc: float, **kw: float) -> dict[str, float]:
    base = {k: 0.5 for k in METRIC_KEYS} | {"false_alarms_per_asset_day": 0.5, "event_recall": 0.9,
                                            gating.EPISODES_KEY: GatesConfig().min_holdout_episodes}
    return base | {"pr_auc": pr_auc} | kw


def _cv(mean: float, std: float, ci_low: float, n: int = 5) -> dict[str, dict[str, float]]:
    """A CV summary as ``gating.cv_metrics`` writes it: ``n`` judged folds of 5."""
    summary = {"mean": mean, "std": std, "ci_low": ci_low, "ci_high": mean + 0.1, "n": n, gating.FOLDS_KEY: 5}
    return {k: dict(summary) for k in METRIC_KEYS}


GATES = GatesConfig()


def test_pilot_rule_needs_the_margin() -> None:
    cv = {"baseline": _cv(0.5, 0.05, 0.45), "custom": _cv(0.5, 0.05, 0.45)}
    close = {"baseline": _metrics(0.50), "custom": _metrics(0.51)}
    d = gating.decide(close, cv, GATES, production=None, review_labels_used=3)
    assert d["chosen"] == "baseline" and "does not beat baseline" in d["notes"][0]
    assert d["review_labels_used"] == 3
    clear = {"baseline": _metrics(0.40), "custom": _metrics(0.60)}
    assert gating.decide(clear, cv, GATES, production=None, review_labels_used=0)["chosen"] == "custom"


def test_every_gate_can_fail() -> None:
    cv = {"custom": _cv(0.5, 0.05, 0.45)}
    ok = gating.decide({"custom": _metrics(0.6)}, cv, GATES, production=None, review_labels_used=0)
    assert ok["passed"]
    too_many = {"false_alarms_per_asset_day": GATES.max_false_alarms_per_asset_day + 0.1}
    cases = [
        ("min_pr_auc", {"custom": _metrics(GATES.min_pr_auc - 0.01)}, cv),
        ("min_event_recall", {"custom": _metrics(0.6, event_recall=GATES.min_event_recall - 0.01)}, cv),
        ("min_event_recall", {"custom": _metrics(0.6, event_recall=math.nan)}, cv),  # undefined fails
        ("max_false_alarms_per_asset_day", {"custom": _metrics(0.6, **too_many)}, cv),
        ("min_cv_ci_low", {"custom": _metrics(0.6)}, {"custom": _cv(0.5, 0.05, GATES.min_cv_ci_low - 0.01)}),
        ("max_cv_std", {"custom": _metrics(0.6)}, {"custom": _cv(0.5, GATES.max_cv_std + 0.01, 0.45)}),
    ]
    for name, holdout, cvs in cases:
        d = gating.decide(holdout, cvs, GATES, production=None, review_labels_used=0)
        failed = [g["name"] for g in d["gates"] if not g["passed"]]
        assert failed == [name], (name, failed)
        assert gating.first_failure(d).startswith(f"gate {name} failed for custom")


def _episodes(n_assets: int, rows: int, every: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels with one ``length``-row episode every ``every`` rows per asset, and the asset column."""
    labels = np.zeros(n_assets * rows, dtype=int)
    for a in range(n_assets):
        for start in range(every // 2, rows - length, every):
            labels[a * rows + start:a * rows + start + length] = 1
    return labels, np.repeat([f"a{a}" for a in range(n_assets)], rows)


def test_non_inferiority_against_production() -> None:
    """Enough episodes (20): an equally good retrain passes, a worse one fails, a better one passes."""
    labels, assets = _episodes(4, 1500, 300, 15)
    rng = np.random.default_rng(0)
    production = labels * 3.0 + rng.normal(size=labels.size)
    # Retrained on more data: mostly the same scores, plus independent noise of its own.
    equal = 0.9 * production + 0.1 * (labels * 3.0 + rng.normal(size=labels.size))
    weak = labels * 0.8 + rng.normal(size=labels.size)
    cv = {"custom": _cv(0.5, 0.05, 0.45)}
    holdout = {"custom": _metrics(0.6)}

    def vs(candidate: np.ndarray, prod: np.ndarray = production) -> dict[str, Any]:
        evidence = gating.noninferiority(labels, candidate, prod, GATES, seed=0, assets=assets)
        return {"tag": "prod:1", **evidence}

    same = vs(equal)
    assert same["episode_blocks"] == 20 and same["n_resamples"] == GATES.bootstrap_resamples
    assert gating.decide(holdout, cv, GATES, production=same, review_labels_used=0)["passed"], same
    worse = vs(weak)
    refused = gating.decide(holdout, cv, GATES, production=worse, review_labels_used=0)
    assert not refused["passed"] and refused["verdict"] == "failed"
    assert refused["gates"][-1]["name"] == "non_inferiority_vs_production"
    assert worse["ci_high"] < -GATES.non_inferiority_tolerance
    better_prod = labels * 0.8 + rng.normal(size=labels.size)
    better = vs(production, better_prod)
    assert better["ci_low"] > 0
    assert gating.decide(holdout, cv, GATES, production=better, review_labels_used=0)["passed"]


def test_bootstrap_is_paired_and_its_level_is_the_documented_one() -> None:
    labels, assets = _episodes(2, 2000, 250, 10)
    rng = np.random.default_rng(3)
    a = labels * 2.0 + rng.normal(size=labels.size)
    b = labels * 1.5 + rng.normal(size=labels.size)
    same = gating.noninferiority(labels, a, a, GATES, seed=0, assets=assets)
    assert same["diff"] == same["ci_low"] == same["ci_high"] == 0.0  # one weighting for both models
    wide = gating.noninferiority(labels, a, b, GATES, seed=0, assets=assets)
    narrow = gating.noninferiority(labels, a, b, GATES.model_copy(update={"ci_level": 0.5}), seed=0,
                                   assets=assets)
    assert wide["level"] == GATES.ci_level
    assert wide["ci_low"] < narrow["ci_low"] <= wide["diff"] <= narrow["ci_high"] < wide["ci_high"]


def test_bootstrap_blocks_keep_every_episode_whole_and_alone() -> None:
    labels, assets = _episodes(3, 1000, 130, 40)
    labels[990:1000] = 1  # an episode running into the asset boundary
    blocks = gating.episode_blocks(labels, assets, n_blocks=7, merge_gap=GATES.episode_merge_gap)
    assert np.all(np.diff(blocks) >= 0)  # contiguous, in row order
    spans = gating.fault_episode_spans(labels, assets, GATES.episode_merge_gap)
    ids = [set(blocks[s:e]) for s, e in spans]
    assert all(len(i) == 1 for i in ids)  # no episode is cut
    assert len({next(iter(i)) for i in ids}) == len(spans)  # no two episodes share a block
    for block in np.unique(blocks):
        assert len(set(assets[blocks == block])) == 1  # a block never spans two assets


def test_too_few_episodes_is_insufficient_evidence_not_a_verdict() -> None:
    """One episode: a great PR-AUC does not pass, a terrible one does not "fail min_pr_auc"."""
    cv = {"custom": _cv(0.5, 0.05, 0.45)}
    for pr in (0.95, 0.05):
        d = gating.decide({"custom": _metrics(pr, fault_episodes=1)}, cv, GATES, production=None,
                          review_labels_used=0)
        assert not d["passed"] and d["verdict"] == "insufficient_evidence"
        assert [g["name"] for g in d["not_judged"]] == list(gating.EPISODE_GATES)
        assert all(g["judged"] is False and g["passed"] is None for g in d["not_judged"])
        failed = [g["name"] for g in d["gates"] if not g["passed"]]
        assert failed == ["min_holdout_episodes"], failed  # the gates it can judge still pass
        need = GATES.min_holdout_episodes
        assert gating.first_failure(d) == ("insufficient evidence to judge custom: "
                                           f"holdout holds 1 fault episode; >= {need} needed to judge")
    enough = gating.decide({"custom": _metrics(0.6, fault_episodes=GATES.min_holdout_episodes)}, cv, GATES,
                           production=None, review_labels_used=0)
    assert enough["passed"] and enough["evidence"]["sufficient"]
    uncounted = {k: v for k, v in _metrics(0.6).items() if k != gating.EPISODES_KEY}
    d = gating.decide({"custom": uncounted}, cv, GATES, production=None, review_labels_used=0)
    assert d["verdict"] == "insufficient_evidence" and "not counted" in d["evidence"]["reason"]


def _cv_scores(episodes: list[int], pr_good: list[bool], rows: int = 2000) -> pd.DataFrame:
    """cv_scores rows (the train stage's format) of one candidate: fold k's test block holds
    ``episodes[k]`` well separated 20-row fault episodes on one asset; its scores rank them on top
    (``pr_good[k]``) or at random."""
    rng = np.random.default_rng(1)
    parts = []
    for fold, (n, good) in enumerate(zip(episodes, pr_good, strict=True)):
        labels = np.zeros(rows, dtype=int)
        for start in np.linspace(100, rows - 200, max(n, 1)).astype(int)[:n]:
            labels[start:start + 20] = 1
        noise = rng.normal(size=rows)
        ts = pd.date_range("2025-01-01", periods=rows, freq="min") + pd.Timedelta(days=2 * fold)
        parts.append(pd.DataFrame({"candidate": "custom", "fold": fold, "asset": "a0", "timestamp": ts,
                                   "label": labels, "score": noise + (4.0 * labels if good else 0.0),
                                   "threshold": 2.5}))
    return pd.concat(parts, ignore_index=True)


def test_fold_with_too_few_episodes_is_left_out_and_reported() -> None:
    """A fold with one episode (ranked at random: the "how hard was that one episode" fold) does not
    enter the CV statistics; it is still reported with its count and the judged flag."""
    k = GATES.min_fold_episodes
    episodes = [k, k + 1, k, k + 2, k - 1]
    summary, folds = gating.cv_metrics(_cv_scores(episodes, [True] * 4 + [False]), "custom", GATES, 0)
    assert [f[gating.EPISODES_KEY] for f in folds] == episodes
    assert [f[gating.JUDGED_KEY] for f in folds] == [True, True, True, True, False]
    pr = summary["pr_auc"]
    assert pr["n"] == 4 and pr[gating.FOLDS_KEY] == 5
    assert pr["mean"] == pytest.approx(np.mean([f["pr_auc"] for f in folds[:4]]))
    assert folds[4]["pr_auc"] < 0.5 < pr["mean"]  # the left-out fold would have dragged it down
    everything = GATES.model_copy(update={"min_fold_episodes": 1})
    all_in, _ = gating.cv_metrics(_cv_scores(episodes, [True] * 4 + [False]), "custom", everything, 0)
    assert all_in["pr_auc"]["n"] == 5 and all_in["pr_auc"]["std"] > pr["std"]


def test_too_few_judged_folds_leaves_the_cv_gates_not_judged() -> None:
    """Two judged folds: min_cv_ci_low / max_cv_std are not judged (with the reason), whatever their
    values, and that alone does not refuse a model the holdout judged good."""
    need = GATES.min_cv_folds
    for ci_low, std in ((0.0, 0.9), (0.45, 0.05)):
        d = gating.decide({"custom": _metrics(0.6)}, {"custom": _cv(0.5, std, ci_low, n=need - 1)}, GATES,
                          production=None, review_labels_used=0)
        assert d["passed"] and d["verdict"] == "passed", d
        assert [g["name"] for g in d["not_judged"]] == list(gating.CV_GATES)
        assert not {g["name"] for g in d["gates"]} & set(gating.CV_GATES)
        reason = (f"{need - 1} of 5 CV folds hold >= {GATES.min_fold_episodes} fault episodes; "
                  f">= {need} judged folds needed to judge the CV gates")
        assert d["cv_evidence"]["reason"] == reason and not d["cv_evidence"]["sufficient"]
        assert all(g["judged"] is False and g["passed"] is None and g["reason"] == reason
                   for g in d["not_judged"])
        assert any(n.startswith(f"CV gates not judged: {reason}") for n in d["notes"])
        report = gating.render_report(d, {"custom": _metrics(0.6)}, {"custom": _cv(0.5, std, ci_low)})
        assert f"CV evidence: {reason}" in report and "| min_cv_ci_low |" in report
        assert "| max_cv_std |" in report and "not judged (too few judged CV folds)" in report
    # the holdout stays the primary evidence: both rules together still say insufficient evidence
    thin = gating.decide({"custom": _metrics(0.6, fault_episodes=1)}, {"custom": _cv(0.5, 0.9, 0.0, n=1)},
                         GATES, production=None, review_labels_used=0)
    assert thin["verdict"] == "insufficient_evidence"
    assert {g["name"] for g in thin["not_judged"]} == {*gating.EPISODE_GATES, *gating.CV_GATES}


def test_enough_judged_folds_are_judged_as_before() -> None:
    need = GATES.min_cv_folds
    bad = gating.decide({"custom": _metrics(0.6)}, {"custom": _cv(0.5, 0.05, GATES.min_cv_ci_low - 0.01,
                                                                   n=need)},
                        GATES, production=None, review_labels_used=0)
    assert bad["verdict"] == "failed" and not bad["not_judged"] and bad["cv_evidence"]["sufficient"]
    assert gating.first_failure(bad).startswith("gate min_cv_ci_low failed for custom")
    unstable = gating.decide({"custom": _metrics(0.6)}, {"custom": _cv(0.5, GATES.max_cv_std + 0.01, 0.45,
                                                                        n=need)},
                             GATES, production=None, review_labels_used=0)
    assert [g["name"] for g in unstable["gates"] if not g["passed"]] == ["max_cv_std"]
    good = gating.decide({"custom": _metrics(0.6)}, {"custom": _cv(0.5, 0.05, 0.45, n=need)}, GATES,
                         production=None, review_labels_used=0)
    assert good["passed"] and [g["name"] for g in good["gates"]][4:6] == list(gating.CV_GATES)
    assert good["cv_evidence"]["reason"] == (f"{need} of 5 CV folds hold >= {GATES.min_fold_episodes} "
                                             f"fault episodes (>= {need} judged folds needed)")


def test_gate_command_fails_with_one_line(project: Path) -> None:
    from plantwatch.cli import app

    (project / "metrics").mkdir()
    (project / "data" / "processed").mkdir(parents=True)
    bad = {"custom": _metrics(0.1), "baseline": _metrics(0.05)}
    (project / "metrics" / "holdout.json").write_text(json.dumps(bad))
    (project / "metrics" / "cv.json").write_text(json.dumps({k: _cv(0.5, 0.05, 0.45) for k in bad}))
    (project / "data" / "processed" / "split.json").write_text(json.dumps({"review_labels_used": 0}))
    pd.DataFrame({"score_custom": [0.1], "score_baseline": [0.2]}).to_parquet(
        project / "metrics" / gating.HOLDOUT_SCORES)
    result = CliRunner().invoke(app, ["gate"])
    assert result.exit_code == 1
    assert "gate min_pr_auc failed for custom" in result.output
    written = json.loads((project / "metrics" / "gates.json").read_text())
    assert written["passed"] is False and written["chosen"] == "custom"
    assert "FAILED" in (project / "reports" / "gates.md").read_text()


def test_gate_command_reports_insufficient_evidence(project: Path) -> None:
    from plantwatch.cli import app

    (project / "metrics").mkdir()
    (project / "data" / "processed").mkdir(parents=True)
    thin = {"custom": _metrics(0.9, fault_episodes=2), "baseline": _metrics(0.05, fault_episodes=2)}
    (project / "metrics" / "holdout.json").write_text(json.dumps(thin))
    (project / "metrics" / "cv.json").write_text(json.dumps({k: _cv(0.5, 0.05, 0.45) for k in thin}))
    (project / "data" / "processed" / "split.json").write_text(json.dumps({"review_labels_used": 0}))
    pd.DataFrame({"score_custom": [0.1], "score_baseline": [0.2]}).to_parquet(
        project / "metrics" / gating.HOLDOUT_SCORES)
    result = CliRunner().invoke(app, ["gate"])
    assert result.exit_code == 1
    need = GatesConfig().min_holdout_episodes
    assert f"holdout holds 2 fault episodes; >= {need} needed to judge" in result.output
    written = json.loads((project / "metrics" / "gates.json").read_text())
    assert written["passed"] is False and written["verdict"] == "insufficient_evidence"
    assert written["evidence"]["holdout_fault_episodes"] == 2
    report = (project / "reports" / "gates.md").read_text()
    assert "INSUFFICIENT EVIDENCE" in report and "| min_pr_auc | 0.9 | 0.3 | not judged" in report
