"""Static PNG figures of the evaluate stage (``reports/figures/``).

DVC's plot HTML loads Vega from a CDN and is blank offline, so the key plots are also rendered
with matplotlib's Agg backend (no display, no network): PR curves, score distributions and the
alerts of each candidate over time per asset, with the labelled anomalies behind them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from plantwatch import schema
from plantwatch.evaluation import frame_arrays, runs

if TYPE_CHECKING:
    from plantwatch.gating import Evaluation

#: Figure size in inches (width, height per panel row) and resolution.
_WIDTH_IN, _ROW_IN, _DPI = 9.0, 3.2, 110


def _pyplot():  # noqa: ANN202 - matplotlib's module
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def write_figures(
    result: Evaluation, holdout: pd.DataFrame, thresholds: dict[str, float], out: Path
) -> list[Path]:
    """pr_curves.png, scores.png, alerts.png; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    return [
        _pr_curves(result, out / "pr_curves.png"),
        _score_distributions(result, holdout, thresholds, out / "scores.png"),
        _alerts(result, holdout, thresholds, out / "alerts.png"),
    ]


def _pr_curves(result: Evaluation, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(_WIDTH_IN / 1.5, _ROW_IN * 1.5))
    for name in result.holdout:
        curve = result.plots[f"pr_curve_{name}"]
        ax.step(curve["recall"], curve["precision"], where="post",
                label=f"{name} (PR-AUC {result.holdout[name]['pr_auc']:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Holdout PR curves")
    ax.legend(loc="upper right")
    return _save(fig, path)


def _score_distributions(result: Evaluation, holdout: pd.DataFrame, thresholds: dict[str, float],
                         path: Path) -> Path:
    plt = _pyplot()
    names = list(result.holdout)
    fig, axes = plt.subplots(len(names), 1, figsize=(_WIDTH_IN, _ROW_IN * len(names)), squeeze=False)
    labels, _, _ = frame_arrays(holdout)
    for ax, name in zip(axes[:, 0], names, strict=True):
        table = result.plots[f"scores_{name}"]
        width = float(np.diff(table["bin_center"]).mean()) if len(table) > 1 else 1.0
        ax.bar(table["bin_center"], table["normal"], width=width, alpha=0.6, label="normal")
        ax.bar(table["bin_center"], table["anomalous"], width=width, alpha=0.6, label="anomalous")
        ax.axvline(thresholds[name], color="black", linestyle="--", label="alert threshold")
        ax.set(title=f"{name}: holdout score distribution ({int(labels.sum())} anomalous readings)",
               xlabel="anomaly score (higher = more anomalous)", ylabel="share of readings")
        ax.legend(loc="upper right")
    return _save(fig, path)


def _alerts(result: Evaluation, holdout: pd.DataFrame, thresholds: dict[str, float], path: Path) -> Path:
    """One panel per candidate: a lane per asset, labelled episodes shaded, alerts as ticks."""
    plt = _pyplot()
    names = list(result.holdout)
    labels, assets, ts = frame_arrays(holdout)
    lanes = sorted(set(assets))
    fig, axes = plt.subplots(len(names), 1, figsize=(_WIDTH_IN, _ROW_IN * len(names)), squeeze=False,
                             sharex=True)
    times = np.asarray(ts, dtype="datetime64[ns]")
    lane_of = {a: i for i, a in enumerate(lanes)}
    y = np.array([lane_of[a] for a in assets])
    for ax, name in zip(axes[:, 0], names, strict=True):
        for start, end in runs(labels == 1, assets):
            ax.plot([times[start], times[end - 1]], [y[start], y[start]], color="tab:red", linewidth=8,
                    alpha=0.3, solid_capstyle="butt")
        alert = result.scores[name] >= thresholds[name]
        ax.scatter(times[alert], y[alert], marker="|", s=80, color="black")
        m = result.holdout[name]
        fa = m["false_alarms_per_asset_day"]
        ax.set(yticks=range(len(lanes)), yticklabels=lanes,
               title=f"{name}: alerts (ticks) vs labelled anomalies (red) — event recall "
                     f"{_pct(m['event_recall'])}, false alarms/asset-day {fa:.2f}")
    axes[-1, 0].set_xlabel(schema.TIMESTAMP)
    fig.autofmt_xdate()
    return _save(fig, path)


def _pct(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.0%}"


def _save(fig, path: Path) -> Path:  # noqa: ANN001 - matplotlib Figure
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
