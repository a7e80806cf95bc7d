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
    frame_arrays,
    paired_block_bootstrap,
    pr_auc,
    pr_curve,
    score_metrics,
    summarize,
)
from plantwatch.paths import ProjectPaths
from plantwatch.registry.atomic import atomic_write_json
from plantwatch.training import read_json, read_part

#: Points kept per PR curve in the DVC plot files (a display resolution).
PR_CURVE_POINTS = 200
#: Bins of the score histograms (plots/scores_<candidate>.csv).
SCORE_BINS = 50
#: Quantiles of all scores that bound the histogram range (keeps a few huge scores from flattening it).
SCORE_RANGE_QUANTILES = (0.001, 0.999)
#: Alerts are counted per asset in buckets of this length for plots/alerts_<candidate>.csv.
ALERT_BUCKET = "6h"


def cv_metrics(
    cv_scores: pd.DataFrame, candidate: str, level: float, episode_gap: int
) -> tuple[dict[str, Any], list[dict]]:
    """Per-metric CV summary {mean, std, ci_low, ci_high, n} and the per-fold metric rows."""
    part = cv_scores[cv_scores["candidate"] == candidate]
    folds = []
    for fold, rows in part.groupby("fold", sort=True):
        labels, assets, ts = frame_arrays(rows)
        threshold = float(rows["threshold"].iloc[0])
        m = score_metrics(labels, rows["score"].to_numpy(), assets, ts, threshold, episode_gap)
        folds.append({"fold": int(fold), **m})
    summary = {k: summarize([f[k] for f in folds], level, METRIC_RANGES[k]) for k in METRIC_KEYS}
    return summary, folds


@dataclass
class Evaluation:
    """What the evaluate stage writes: metrics per candidate and the plot tables."""

    holdout: dict[str, dict[str, float]]
    cv: dict[str, dict[str, dict[str, float]]]
    cv_folds: dict[str, list[dict[str, Any]]]
    scores: dict[str, np.ndarray] = field(repr=False)
    plots: dict[str, pd.DataFrame] = field(repr=False)


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
    """
    labels, assets, ts = frame_arrays(holdout)
    result = Evaluation(holdout={}, cv={}, cv_folds={}, scores={}, plots={})
    for name, bundle in bundles.items():
        s = bundle.anomaly_score(holdout, context=context)
        result.scores[name] = s
        result.holdout[name] = score_metrics(labels, s, assets, ts, bundle.threshold_, episode_gap)
        result.cv[name], result.cv_folds[name] = cv_metrics(cv_scores, name, gates.ci_level, episode_gap)
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


def noninferiority(
    labels: np.ndarray, candidate: np.ndarray, production: np.ndarray, gates: GatesConfig, seed: int
) -> dict[str, float]:
    """Paired block bootstrap of PR-AUC(candidate) − PR-AUC(production) on the same holdout rows."""
    return paired_block_bootstrap(
        labels, candidate, production, n_resamples=gates.bootstrap_resamples,
        n_blocks=gates.bootstrap_blocks, level=gates.ci_level, seed=seed,
    )


def decide(
    holdout: dict[str, dict[str, float]],
    cv: dict[str, dict[str, dict[str, float]]],
    gates: GatesConfig,
    *,
    production: dict[str, Any] | None,
    review_labels_used: int,
) -> dict[str, Any]:
    """The gates.json document. ``production``: None (no production model yet) or
    ``{"tag": ..., "diff": ..., "ci_low": ..., "ci_high": ...}`` from ``noninferiority``."""
    chosen, notes = choose_candidate(holdout, gates)
    h, c = holdout[chosen], cv[chosen]["pr_auc"]
    results = [
        _gate("min_pr_auc", h["pr_auc"], gates.min_pr_auc, True),
        _gate("min_event_recall", h["event_recall"], gates.min_event_recall, True),
        _gate("max_false_alarms_per_asset_day", h["false_alarms_per_asset_day"],
              gates.max_false_alarms_per_asset_day, False),
        _gate("min_cv_ci_low", c["ci_low"], gates.min_cv_ci_low, True),
        _gate("max_cv_std", c["std"], gates.max_cv_std, False),
    ]
    tolerance = -gates.non_inferiority_tolerance
    if production is None:
        skipped = {"name": "non_inferiority_vs_production", "value": None, "threshold": tolerance,
                   "passed": True, "skipped": True}
        results.append(skipped)
        notes.append("non-inferiority skipped: no model in production yet")
    else:
        results.append(_gate("non_inferiority_vs_production", production["ci_low"], tolerance, True))
        notes.append(
            f"vs production {production['tag']}: PR-AUC difference {production['diff']:+.3f}, "
            f"{gates.ci_level:.0%} interval [{production['ci_low']:+.3f}, {production['ci_high']:+.3f}]"
        )
    failed = [g["name"] for g in results if not g["passed"]]
    if failed:
        notes.append(f"failed gate(s): {', '.join(failed)}")
    return {"passed": not failed, "chosen": chosen, "gates": results, "notes": notes,
            "review_labels_used": int(review_labels_used)}


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
            value = "undefined" if g["value"] is None else f"{g['value']:.4g}"
            need = f"{'≤' if g['name'].startswith('max_') else '≥'} {g['threshold']:.4g}"
            return f"gate {g['name']} failed for {decision['chosen']}: {value} (required {need})"
    return None


def render_report(decision: dict[str, Any], holdout: dict[str, dict[str, float]],
                  cv: dict[str, dict[str, dict[str, float]]]) -> str:
    """reports/gates.md: verdict, why this candidate, every gate, and the metrics side by side."""
    verdict = "PASSED" if decision["passed"] else "FAILED"
    lines = [f"# Gate report: {verdict}", "", f"Chosen candidate: **{decision['chosen']}**", ""]
    lines += [f"- {n}" for n in decision["notes"]]
    lines += ["", f"Reviewed labels used: {decision['review_labels_used']}", "",
              "| gate | value | threshold | result |", "|---|---|---|---|"]
    for g in decision["gates"]:
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
    labels, _, _ = frame_arrays(holdout)
    return {"tag": tag, **noninferiority(labels, chosen_scores, prod_scores, params.gates, params.train.seed)}


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
