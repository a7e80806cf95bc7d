"""Cores of the ``evaluate`` and ``gate`` stages (pure: bundles, frames and config in; dicts out).

``evaluate_candidates`` scores every candidate on the frozen holdout (with the validation period as
feature history, so the holdout's first readings are not cold-started) and summarises the CV
folds that the train stage scored, all with the conventions of ``plantwatch.evaluation``.

``decide`` applies the gates to the chosen candidate. Choosing: the custom model is chosen over
the baseline only if its holdout PR-AUC is better by at least ``gates.min_gain_over_baseline``;
otherwise the simpler baseline is the candidate and the notes say why. The chosen candidate must
then pass every gate (floors on holdout PR-AUC and event recall, the false-alarm ceiling, a floor
on the lower end of the CV PR-AUC interval, a ceiling on its fold-to-fold std, and non-inferiority
to the production model on the same holdout: the lower end of the paired block-bootstrap interval
of PR-AUC(candidate) − PR-AUC(production) must be ≥ −tolerance; skipped, with a note, while no
model is in production). A metric that is undefined (NaN) fails its gate: it proves nothing.

Evidence first: the holdout gates judge a model on the holdout's labelled fault episodes. With fewer
than ``gates.min_holdout_episodes`` of them, PR-AUC, event recall and non-inferiority are noise, so
they are NOT judged (listed under ``not_judged``) and the verdict is ``insufficient_evidence``: the
model is refused, and the report says why in one line ("holdout holds 1 fault episode; >= 5 needed
to judge"), never "failed min_pr_auc" for a coin toss, never "passed" for luck.

The CV gates follow the same rule, fold by fold: a CV test block with fewer than
``gates.min_fold_episodes`` fault episodes (counted like the holdout's) says how hard its one episode
was, not how stable the model is, so it is left out of the CV statistics (still reported in
metrics/cv_folds.json with its count and ``judged: false``). With fewer than ``gates.min_cv_folds``
judged folds, ``min_cv_ci_low`` and ``max_cv_std`` are not judged (listed under ``not_judged`` with the
reason). That alone does not make the verdict ``insufficient_evidence``: the holdout is the primary
evidence, the CV gates are a stability check on top of it (README "Training, evaluation and gates").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from plantwatch import schema
from plantwatch.bundle import DetectorBundle, load_bundle
from plantwatch.config import GatesConfig, Params
from plantwatch.errors import DataError, GateFailed
from plantwatch.evaluation import (
    METRIC_KEYS,
    METRIC_RANGES,
    RankedScores,
    frame_arrays,
    pr_auc,
    pr_curve,
    score_metrics,
    summarize,
)
from plantwatch.paths import ProjectPaths
from plantwatch.registry.atomic import atomic_write_json
from plantwatch.split_pin import fault_episode_spans, holdout_episode_count
from plantwatch.training import read_json, read_part

#: Points kept per PR curve in the DVC plot files (a display resolution).
PR_CURVE_POINTS = 200
#: Bins of the score histograms (plots/scores_<candidate>.csv).
SCORE_BINS = 50
#: Quantiles of all scores that bound the histogram range (keeps a few huge scores from flattening it).
SCORE_RANGE_QUANTILES = (0.001, 0.999)
#: Alerts are counted per asset in buckets of this length for plots/alerts_<candidate>.csv.
ALERT_BUCKET = "6h"
#: Key of the holdout's fault-episode count in each candidate's holdout metrics (metrics/holdout.json).
EPISODES_KEY = "fault_episodes"
#: The evidence gate: the holdout must hold ``gates.min_holdout_episodes`` fault episodes.
EVIDENCE_GATE = "min_holdout_episodes"
NON_INFERIORITY = "non_inferiority_vs_production"
#: Gates decided by the holdout's fault episodes: not judged when the evidence gate fails.
EPISODE_GATES = ("min_pr_auc", "min_event_recall", NON_INFERIORITY)
#: Gates decided by the CV folds: not judged when fewer than ``gates.min_cv_folds`` folds are judged.
CV_GATES = ("min_cv_ci_low", "max_cv_std")
#: Key of a fold's judged flag in metrics/cv_folds.json (False: too few fault episodes, left out).
JUDGED_KEY = "judged"
#: Keys a CV summary adds to ``summarize``'s: how many folds there were in all (``n`` = judged ones).
FOLDS_KEY = "folds"


def cv_metrics(
    cv_scores: pd.DataFrame, candidate: str, gates: GatesConfig, episode_gap: int
) -> tuple[dict[str, Any], list[dict]]:
    """Per-metric CV summary {mean, std, ci_low, ci_high, n, folds} (interval at ``gates.ci_level``)
    and the per-fold metric rows.

    Every fold row carries ``fault_episodes`` (its test block's, counted like the holdout's) and
    ``judged``: whether it holds ``gates.min_fold_episodes``. Only judged folds enter the summaries
    (``n`` of them, out of ``folds``): a fold decided by one fault episode measures that episode's
    difficulty, not the model's stability.
    """
    part = cv_scores[cv_scores["candidate"] == candidate]
    folds = []
    for fold, rows in part.groupby("fold", sort=True):
        labels, assets, ts = frame_arrays(rows)
        threshold = float(rows["threshold"].iloc[0])
        m = score_metrics(labels, rows["score"].to_numpy(), assets, ts, threshold, episode_gap)
        episodes = holdout_episode_count(rows, gates.episode_merge_gap)
        folds.append({"fold": int(fold), **m, EPISODES_KEY: episodes,
                      JUDGED_KEY: episodes >= gates.min_fold_episodes})
    judged = [f for f in folds if f[JUDGED_KEY]]
    summary = {k: {**summarize([f[k] for f in judged], gates.ci_level, METRIC_RANGES[k]),
                   FOLDS_KEY: len(folds)} for k in METRIC_KEYS}
    return summary, folds


@dataclass
class Evaluation:
    """What the evaluate stage writes: metrics per candidate and the plot tables."""

    holdout: dict[str, dict[str, float]]
    cv: dict[str, dict[str, dict[str, float]]]
    cv_folds: dict[str, list[dict[str, Any]]]
    scores: dict[str, np.ndarray] = field(repr=False)
    plots: dict[str, pd.DataFrame] = field(repr=False)
    #: Fault episodes in the holdout (``gates.episode_merge_gap``): the evidence the metrics rest on.
    holdout_episodes: int = 0


def evaluate_candidates(
    bundles: dict[str, DetectorBundle],
    holdout: pd.DataFrame,
    context: pd.DataFrame | None,
    cv_scores: pd.DataFrame,
    gates: GatesConfig,
    episode_gap: int,
) -> Evaluation:
    """Holdout and CV metrics of every candidate, plus the tables behind the DVC plots.

    ``episode_gap``: ``train.episode_gap``, the same alert-episode definition the thresholds were set with.
    Each candidate's holdout metrics also carry ``fault_episodes``: how many fault episodes (labelled
    runs merged within ``gates.episode_merge_gap`` readings) they were computed on.
    """
    labels, assets, ts = frame_arrays(holdout)
    episodes = len(fault_episode_spans(labels, assets, gates.episode_merge_gap))
    result = Evaluation(holdout={}, cv={}, cv_folds={}, scores={}, plots={}, holdout_episodes=episodes)
    for name, bundle in bundles.items():
        s = bundle.anomaly_score(holdout, context=context)
        result.scores[name] = s
        metrics = score_metrics(labels, s, assets, ts, bundle.threshold_, episode_gap)
        result.holdout[name] = {**metrics, EPISODES_KEY: episodes}
        result.cv[name], result.cv_folds[name] = cv_metrics(cv_scores, name, gates, episode_gap)
        result.plots[f"pr_curve_{name}"] = pr_curve(labels, s, PR_CURVE_POINTS)
        result.plots[f"scores_{name}"] = score_histogram(s, labels)
        result.plots[f"alerts_{name}"] = alert_events(holdout, s >= bundle.threshold_)
    return result


def score_histogram(scores: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Density of scores of normal vs anomalous rows on shared bins (bin_center, normal, anomalous)."""
    lo, hi = np.quantile(scores, SCORE_RANGE_QUANTILES)
    if not hi > lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, SCORE_BINS + 1)
    clipped = np.clip(scores, lo, hi)
    out = {"bin_center": (edges[:-1] + edges[1:]) / 2}
    for name, mask in (("normal", labels == 0), ("anomalous", labels == 1)):
        counts, _ = np.histogram(clipped[mask], bins=edges)
        out[name] = counts / max(int(mask.sum()), 1)
    return pd.DataFrame(out)


def alert_events(frame: pd.DataFrame, alerts: np.ndarray) -> pd.DataFrame:
    """One row per alerting reading: asset and time bucket (a DVC ``confusion`` plot counts them),
    plus whether the reading was labelled anomalous."""
    rows = frame[alerts]
    labels, assets, ts = frame_arrays(rows)
    period = pd.DatetimeIndex(ts).floor(ALERT_BUCKET).strftime("%Y-%m-%d %H:%M")
    return pd.DataFrame({"asset": assets, "period": np.asarray(period),
                         "labelled": np.where(labels == 1, "anomaly", "normal")})


# ---------------------------------------------------------------------------------------------------
# gates
# ---------------------------------------------------------------------------------------------------


def choose_candidate(holdout: dict[str, dict[str, float]], gates: GatesConfig) -> tuple[str, list[str]]:
    """The pilot rule: custom only when it beats the baseline's holdout PR-AUC by the required margin."""
    if len(holdout) == 1:
        only = next(iter(holdout))
        return only, [f"only one candidate was trained: {only}"]
    custom, base = holdout["custom"]["pr_auc"], holdout["baseline"]["pr_auc"]
    gain = custom - base if math.isfinite(custom) and math.isfinite(base) else math.nan
    if math.isfinite(gain) and gain >= gates.min_gain_over_baseline:
        return "custom", [f"custom chosen: holdout PR-AUC {custom:.3f} beats baseline {base:.3f} by "
                          f"{gain:+.3f} (required ≥ {gates.min_gain_over_baseline:+.3f})"]
    return "baseline", [f"baseline chosen: custom holdout PR-AUC {custom:.3f} does not beat baseline "
                        f"{base:.3f} by the required {gates.min_gain_over_baseline:+.3f} (gain {gain:+.3f}); "
                        "the simpler model is kept"]


def _gate(name: str, value: float | None, threshold: float, higher_is_better: bool) -> dict[str, Any]:
    ok = value is not None and math.isfinite(value) and (
        value >= threshold if higher_is_better else value <= threshold)
    finite = value if value is not None and math.isfinite(value) else None
    return {"name": name, "value": finite, "threshold": threshold, "passed": bool(ok)}


def evidence_gate(episodes: float | None, gates: GatesConfig) -> dict[str, Any]:
    """Does the holdout hold enough fault episodes for its metrics to mean anything?

    ``episodes`` None/NaN = not counted (metrics from before the count existed): not enough either.
    """
    need = gates.min_holdout_episodes
    if episodes is None or not math.isfinite(episodes):
        return {"name": EVIDENCE_GATE, "value": None, "threshold": need, "passed": False,
                "reason": f"the holdout's fault episodes were not counted (re-run evaluate); >= {need} "
                          "needed to judge"}
    n = int(episodes)
    holds = f"holdout holds {n} fault episode{'' if n == 1 else 's'}"
    if n >= need:
        return {"name": EVIDENCE_GATE, "value": n, "threshold": need, "passed": True,
                "reason": f"{holds} (>= {need} needed to judge)"}
    return {"name": EVIDENCE_GATE, "value": n, "threshold": need, "passed": False,
            "reason": f"{holds}; >= {need} needed to judge"}


def cv_evidence(summary: dict[str, Any], gates: GatesConfig) -> dict[str, Any]:
    """Do enough CV folds hold enough fault episodes for the CV gates to mean anything?

    ``summary``: the chosen candidate's CV PR-AUC summary (``cv_metrics``): ``n`` judged folds of
    ``folds``. A count that is missing (cv.json from before the rule) counts as the folds it has.
    """
    n = summary.get("n")
    judged = int(n) if n is not None and math.isfinite(n) else 0
    raw = summary.get(FOLDS_KEY)
    total = int(raw) if raw is not None and math.isfinite(raw) else None
    of = f" of {total}" if total is not None else ""
    need, k = gates.min_cv_folds, gates.min_fold_episodes
    holds = f"{judged}{of} CV folds hold >= {k} fault episode{'' if k == 1 else 's'}"
    sufficient = judged >= need
    reason = (f"{holds} (>= {need} judged folds needed)" if sufficient
              else f"{holds}; >= {need} judged folds needed to judge the CV gates")
    return {"judged_folds": judged, "folds": total, "min_cv_folds": need,
            "min_fold_episodes": gates.min_fold_episodes, "sufficient": sufficient, "reason": reason}


def episode_blocks(labels: np.ndarray, assets: np.ndarray, n_blocks: int, merge_gap: int) -> np.ndarray:
    """Block id of every row (rows ordered by asset, timestamp) for the moving-block bootstrap.

    The rows are cut into ``n_blocks`` equal stretches, plus a cut at every change of asset; a cut that
    would fall inside a fault episode (``fault_episode_spans``) moves to that episode's end, and two
    episodes that would share a block are separated by a cut halfway between them. So every episode
    lies whole in its own block: resampling never creates half-episodes, and the unit the bootstrap
    resamples is the unit the evidence gate counts.
    """
    y = np.asarray(labels, dtype=int)
    n = y.size
    spans = fault_episode_spans(y, assets, merge_gap)
    cuts = np.linspace(0, n, n_blocks + 1).round().astype(np.int64)[1:-1]
    codes = pd.factorize(np.asarray(assets))[0]
    asset_starts = np.flatnonzero(np.r_[False, codes[1:] != codes[:-1]])
    if len(spans):
        inside = np.searchsorted(spans[:, 0], cuts, side="right") - 1
        span = spans[np.maximum(inside, 0)]
        hit = (inside >= 0) & (cuts > span[:, 0]) & (cuts < span[:, 1])
        cuts = np.where(hit, span[:, 1], cuts)
        existing = np.sort(np.r_[cuts, asset_starts])
        ends, next_starts = spans[:-1, 1], spans[1:, 0]
        # a cut in [end of one episode, start of the next] already separates them
        shared = (np.searchsorted(existing, ends, side="left")
                  == np.searchsorted(existing, next_starts, side="right"))
        cuts = np.r_[cuts, (ends[shared] + next_starts[shared]) // 2]
    bounds = np.unique(np.r_[cuts, asset_starts])
    bounds = bounds[(bounds > 0) & (bounds < n)]
    return np.searchsorted(bounds, np.arange(n), side="right")


def noninferiority(
    labels: np.ndarray,
    candidate: np.ndarray,
    production: np.ndarray,
    gates: GatesConfig,
    seed: int,
    *,
    assets: np.ndarray,
) -> dict[str, Any]:
    """PR-AUC(candidate) − PR-AUC(production) on the same holdout rows, with a paired, stratified,
    episode-aligned block bootstrap interval at ``gates.ci_level``.

    * Paired: each resample draws ONE set of block weights and scores both models with it, so the
      difficulty they share (which episodes happen to be drawn) cancels out of the difference.
    * Blocks (``episode_blocks``): neighbouring readings are strongly correlated, so contiguous blocks
      are resampled, and no block boundary cuts a fault episode.
    * Stratified: blocks that hold a fault episode and blocks that do not are resampled separately,
      each as many as the holdout has. The number of episodes is fixed by the (pinned) holdout, not a
      random quantity: letting it swing (resamples with 0 or 1 episode, whose PR-AUC is undefined or
      decided by one event) would measure the bootstrap's own prevalence noise, not the models.
    * Level: the gate uses the LOWER end of the two-sided ``ci_level`` interval, i.e. a one-sided
      non-inferiority test at level (1 + ci_level) / 2 (α = 2.5 % for 0.95), the usual convention.
    """
    y = np.asarray(labels, dtype=int)
    nan = {"diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n_resamples": 0}
    if y.size == 0 or y.sum() == 0:
        return {**nan, "blocks": 0, "episode_blocks": 0, "level": gates.ci_level}
    new, old = RankedScores.of(candidate), RankedScores.of(production)
    ones = np.ones(y.size)
    diff = new.average_precision(y, ones) - old.average_precision(y, ones)
    block = episode_blocks(y, assets, gates.bootstrap_blocks, gates.episode_merge_gap)
    n_blocks = int(block.max()) + 1
    positive = np.bincount(block, weights=y, minlength=n_blocks) > 0
    strata = [np.flatnonzero(positive), np.flatnonzero(~positive)]
    rng = np.random.default_rng(seed)
    diffs = np.empty(gates.bootstrap_resamples)
    for i in range(gates.bootstrap_resamples):
        counts = np.zeros(n_blocks)
        for members in strata:
            if members.size:
                np.add.at(counts, rng.choice(members, members.size, replace=True), 1.0)
        w = counts[block]
        diffs[i] = new.average_precision(y, w) - old.average_precision(y, w)
    tail = (1.0 - gates.ci_level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return {"diff": float(diff), "ci_low": float(low), "ci_high": float(high),
            "n_resamples": int(diffs.size), "blocks": n_blocks, "episode_blocks": int(positive.sum()),
            "level": gates.ci_level}


def noninferiority_gate(production: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """The non-inferiority gate, with why it failed: clearly worse (the whole interval lies below
    −tolerance) or not shown (the interval straddles −tolerance: too little evidence to tell)."""
    gate = _gate(NON_INFERIORITY, production["ci_low"], tolerance, True)
    low, high = production["ci_low"], production["ci_high"]
    span = f"interval [{low:+.3f}, {high:+.3f}]"
    episodes = production.get("episode_blocks")
    on = f" on {episodes} fault episodes" if episodes is not None else ""
    if gate["passed"]:
        gate["reason"] = f"non-inferior: {span}{on} lies above {tolerance:+.3f}"
    elif math.isfinite(high) and high < tolerance:
        gate["reason"] = f"worse than production: the whole {span}{on} lies below {tolerance:+.3f}"
    else:
        gate["reason"] = (f"non-inferiority not shown: {span}{on} reaches below {tolerance:+.3f}; "
                          "the holdout cannot tell this model from a worse one (more fault episodes needed)")
    return gate


def decide(
    holdout: dict[str, dict[str, float]],
    cv: dict[str, dict[str, dict[str, float]]],
    gates: GatesConfig,
    *,
    production: dict[str, Any] | None,
    review_labels_used: int,
) -> dict[str, Any]:
    """The gates.json document. ``production``: None (no production model yet) or
    ``{"tag": ..., "diff": ..., "ci_low": ..., "ci_high": ...}`` from ``noninferiority``.

    ``verdict``: ``passed``, ``failed`` (a judged gate failed) or ``insufficient_evidence`` (the
    holdout holds too few fault episodes: its gates are listed under ``not_judged``; refused).
    Too few judged CV folds (``cv_evidence``) puts the CV gates under ``not_judged`` too, but does not
    by itself change the verdict: the holdout is the primary evidence, CV a stability check.
    """
    chosen, notes = choose_candidate(holdout, gates)
    h, c = holdout[chosen], cv[chosen]["pr_auc"]
    evidence = evidence_gate(h.get(EPISODES_KEY), gates)
    folds = cv_evidence(c, gates)
    results = [
        evidence,
        _gate("min_pr_auc", h["pr_auc"], gates.min_pr_auc, True),
        _gate("min_event_recall", h["event_recall"], gates.min_event_recall, True),
        _gate("max_false_alarms_per_asset_day", h["false_alarms_per_asset_day"],
              gates.max_false_alarms_per_asset_day, False),
        _gate("min_cv_ci_low", c["ci_low"], gates.min_cv_ci_low, True),
        _gate("max_cv_std", c["std"], gates.max_cv_std, False),
    ]
    tolerance = -gates.non_inferiority_tolerance
    if production is None:
        skipped = {"name": NON_INFERIORITY, "value": None, "threshold": tolerance,
                   "passed": True, "skipped": True}
        results.append(skipped)
        notes.append("non-inferiority skipped: no model in production yet")
    else:
        results.append(noninferiority_gate(production, tolerance))
        level = production.get("level", gates.ci_level)
        notes.append(
            f"vs production {production['tag']}: PR-AUC difference {production['diff']:+.3f}, "
            f"{level:.0%} interval [{production['ci_low']:+.3f}, {production['ci_high']:+.3f}] "
            f"(paired block bootstrap over {production.get('blocks', '?')} blocks, "
            f"{production.get('episode_blocks', '?')} holding fault episodes; lower end ≥ {tolerance:+.3f} "
            "needed)"
        )
    not_judged: list[dict[str, Any]] = []
    if not evidence["passed"]:
        not_judged = [{**g, "passed": None, "judged": False} for g in results if g["name"] in EPISODE_GATES]
        results = [g for g in results if g["name"] not in EPISODE_GATES]
        notes.append(
            f"insufficient evidence: {evidence['reason']}; PR-AUC, event recall, non-inferiority and the "
            "choice between candidates are not judged. Label more faults, or (first split) give the "
            "holdout more data: split.max_holdout_fraction, more days, or delete the split pin to re-split"
        )
    if not folds["sufficient"]:
        not_judged += [{**g, "passed": None, "judged": False, "reason": folds["reason"]}
                       for g in results if g["name"] in CV_GATES]
        results = [g for g in results if g["name"] not in CV_GATES]
        notes.append(
            f"CV gates not judged: {folds['reason']} (a fold with fewer is one episode's difficulty, not "
            "stability); the verdict rests on the holdout. More labelled faults or longer data give the "
            "folds more episodes"
        )
    failed = [g["name"] for g in results if not g["passed"]]
    if failed:
        notes.append(f"failed gate(s): {', '.join(failed)}")
    verdict = "passed" if not failed else ("insufficient_evidence" if not evidence["passed"] else "failed")
    return {"passed": not failed, "verdict": verdict, "chosen": chosen, "gates": results,
            "not_judged": not_judged,
            "evidence": {"holdout_fault_episodes": evidence["value"], "min_holdout_episodes":
                         gates.min_holdout_episodes, "episode_merge_gap": gates.episode_merge_gap,
                         "sufficient": evidence["passed"], "reason": evidence["reason"]},
            "cv_evidence": folds,
            "notes": notes, "review_labels_used": int(review_labels_used)}


def review_effect(
    source_labels: np.ndarray, reviewed_labels: np.ndarray, scores: np.ndarray
) -> dict[str, Any]:
    """How reviewers' verdicts moved the holdout metric: PR-AUC under the source's labels vs the merged
    labels, same scores. NaN where a labelling has no anomaly (undefined, never 0)."""
    src, rev = np.asarray(source_labels, dtype=int), np.asarray(reviewed_labels, dtype=int)
    return {
        "rows_relabelled": int((src != rev).sum()),
        "pr_auc_source_labels": pr_auc(src, scores),
        "pr_auc_reviewed_labels": pr_auc(rev, scores),
    }


def first_failure(decision: dict[str, Any]) -> str | None:
    """One line naming the first failed gate (what the CLI prints before exiting 1)."""
    for g in decision["gates"]:
        if not g["passed"]:
            if g["name"] == EVIDENCE_GATE:
                return f"insufficient evidence to judge {decision['chosen']}: {g['reason']}"
            value = "undefined" if g["value"] is None else f"{g['value']:.4g}"
            need = f"{'≤' if g['name'].startswith('max_') else '≥'} {g['threshold']:.4g}"
            why = f": {g['reason']}" if g.get("reason") else ""
            return f"gate {g['name']} failed for {decision['chosen']}: {value} (required {need}){why}"
    return None


def render_report(decision: dict[str, Any], holdout: dict[str, dict[str, float]],
                  cv: dict[str, dict[str, dict[str, float]]]) -> str:
    """reports/gates.md: verdict, why this candidate, every gate, and the metrics side by side."""
    verdict = {"passed": "PASSED", "failed": "FAILED", "insufficient_evidence": "INSUFFICIENT EVIDENCE"}.get(
        str(decision.get("verdict")), "PASSED" if decision["passed"] else "FAILED")
    lines = [f"# Gate report: {verdict}", "", f"Chosen candidate: **{decision['chosen']}**", ""]
    if decision.get("evidence"):
        lines += [f"Evidence: {decision['evidence']['reason']}", ""]
    if decision.get("cv_evidence"):
        lines += [f"CV evidence: {decision['cv_evidence']['reason']}", ""]
    lines += [f"- {n}" for n in decision["notes"]]
    lines += ["", f"Reviewed labels used: {decision['review_labels_used']}", "",
              "| gate | value | threshold | result |", "|---|---|---|---|"]
    for g in [*decision["gates"], *decision.get("not_judged", [])]:
        if g.get("judged") is False:
            why = "too few judged CV folds" if g["name"] in CV_GATES else "insufficient evidence"
            result = f"not judged ({why})"
        else:
            result = "skipped" if g.get("skipped") else ("pass" if g["passed"] else "**FAIL**")
        lines.append(f"| {g['name']} | {fmt_value(g['value'])} | {fmt_value(g['threshold'])} | {result} |")
    names = list(holdout)
    lines += ["", "## Holdout metrics (point-wise at the operating threshold)", "",
              "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {k} | " + " | ".join(fmt_value(holdout[n][k]) for n in names) + " |" for k in METRIC_KEYS]
    lines += ["", "## Cross-validation (mean ± std, interval)", "",
              "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in METRIC_KEYS:
        lines.append(f"| {k} | " + " | ".join(fmt_summary(cv[n][k]) for n in names) + " |")
    return "\n".join(lines) + "\n"


def fmt_summary(summary: dict[str, float]) -> str:
    """``mean ± std [ci_low, ci_high]`` of one CV metric."""
    return (f"{fmt_value(summary['mean'])} ± {fmt_value(summary['std'])} "
            f"[{fmt_value(summary['ci_low'])}, {fmt_value(summary['ci_high'])}]")


def fmt_value(v: Any) -> str:
    """A metric for people: 4 significant digits, ``n/a`` for undefined."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.4g}" if isinstance(v, float | int) else str(v)


# ---------------------------------------------------------------------------------------------------
# I/O shells
# ---------------------------------------------------------------------------------------------------

#: Per-row holdout scores of every candidate, written by evaluate and read by gate.
HOLDOUT_SCORES = "holdout_scores.parquet"
#: Every CV fold's metrics per candidate (the rows behind metrics/cv.json's summaries).
CV_FOLDS = "cv_folds.json"


def load_candidates(paths: ProjectPaths, params: Params) -> dict[str, DetectorBundle]:
    bundles: dict[str, DetectorBundle] = {}
    for kind in params.train.candidates:
        path = paths.models / f"{kind}.skops"
        if not path.is_file():
            raise DataError(f"models/{kind}.skops not found: run `plantwatch train` first")
        bundles[kind] = load_bundle(path)
    return bundles


def evaluate_stage(paths: ProjectPaths, params: Params) -> Evaluation:
    """``plantwatch evaluate``: metrics/holdout.json, metrics/cv.json, plots/*.csv, reports/figures/*.png."""
    from plantwatch.figures import write_figures

    bundles = load_candidates(paths, params)
    holdout, validation = read_part(paths, "holdout"), read_part(paths, "validation")
    cv_path = paths.models / "cv_scores.parquet"
    if not cv_path.is_file():
        raise DataError("models/cv_scores.parquet not found: run `plantwatch train` first")
    result = evaluate_candidates(bundles, holdout, validation, pd.read_parquet(cv_path), params.gates,
                                 params.train.episode_gap)
    paths.metrics.mkdir(parents=True, exist_ok=True)
    atomic_write_json(paths.metrics / "holdout.json", result.holdout)
    atomic_write_json(paths.metrics / "cv.json", result.cv)
    atomic_write_json(paths.metrics / CV_FOLDS, result.cv_folds)
    labels, assets, ts = frame_arrays(holdout)
    scores = pd.DataFrame({schema.ASSET: assets, schema.TIMESTAMP: ts, schema.LABEL: labels,
                           **{f"score_{k}": v for k, v in result.scores.items()}})
    if schema.SOURCE_LABEL in holdout.columns:  # reviewed labels were merged: keep the source's own
        scores[schema.SOURCE_LABEL] = holdout[schema.SOURCE_LABEL].fillna(0).to_numpy().astype(int)
    scores.to_parquet(paths.metrics / HOLDOUT_SCORES, index=False)
    paths.plots.mkdir(parents=True, exist_ok=True)
    for name, table in result.plots.items():
        table.to_csv(paths.plots / f"{name}.csv", index=False)
    write_figures(result, holdout, {k: b.threshold_ for k, b in bundles.items()}, paths.reports / "figures")
    return result


def _nan_for_none(block: Any) -> Any:
    """JSON null (how NaN is stored) back to NaN for the gate arithmetic."""
    if isinstance(block, dict):
        return {k: _nan_for_none(v) for k, v in block.items()}
    return math.nan if block is None else block


def production_comparison(
    paths: ProjectPaths, params: Params, chosen_scores: np.ndarray
) -> dict[str, Any] | None:
    """Non-inferiority evidence against the production model on the same holdout, or None if none."""
    from plantwatch.registry import Registry

    registry = Registry(paths.root, params.registry)
    if registry.production_tag() is None:
        return None
    tag, bundle = registry.load_production()
    holdout, validation = read_part(paths, "holdout"), read_part(paths, "validation")
    prod_scores = bundle.anomaly_score(holdout, context=validation)
    labels, assets, _ = frame_arrays(holdout)
    return {"tag": tag, **noninferiority(labels, chosen_scores, prod_scores, params.gates, params.train.seed,
                                         assets=assets)}


def gate_stage(paths: ProjectPaths, params: Params) -> dict[str, Any]:
    """``plantwatch gate``: metrics/gates.json + reports/gates.md; ``GateFailed`` (exit 1) on a failure."""
    holdout = _nan_for_none(read_json(paths.metrics / "holdout.json", paths.root, "evaluate"))
    cv = _nan_for_none(read_json(paths.metrics / "cv.json", paths.root, "evaluate"))
    split = read_json(paths.processed / "split.json", paths.root, "features")
    chosen, _ = choose_candidate(holdout, params.gates)
    scores = pd.read_parquet(paths.metrics / HOLDOUT_SCORES)
    production = production_comparison(paths, params, scores[f"score_{chosen}"].to_numpy())
    decision = decide(holdout, cv, params.gates, production=production,
                      review_labels_used=int(split.get("review_labels_used", 0)))
    if schema.SOURCE_LABEL in scores.columns:
        effect = review_effect(scores[schema.SOURCE_LABEL].to_numpy(), scores[schema.LABEL].to_numpy(),
                               scores[f"score_{chosen}"].to_numpy())
        decision["review_effect"] = effect
        decision["notes"].append(
            f"reviewed labels changed {effect['rows_relabelled']} holdout label(s) and moved {chosen}'s "
            f"holdout PR-AUC from {fmt_value(effect['pr_auc_source_labels'])} (source labels) to "
            f"{fmt_value(effect['pr_auc_reviewed_labels'])} (with reviews)"
        )
    atomic_write_json(paths.metrics / "gates.json", decision)
    paths.reports.mkdir(parents=True, exist_ok=True)
    (paths.reports / "gates.md").write_text(render_report(decision, holdout, cv))
    failure = first_failure(decision)
    if failure:
        raise GateFailed(failure)
    return decision
