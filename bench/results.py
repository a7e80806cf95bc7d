"""The README's results table: baseline vs custom on the simulator and three real datasets.

Run: ``.venv/bin/python bench/results.py`` (about 10-20 minutes on 2 cores; ``--datasets sim smd``
for a subset; ``--markdown`` to print the table as Markdown for the README).

Every row is the pipeline's own cores run in-process with that dataset's params file (params.yaml
for the simulator, params/<name>.yaml for the real data): ingest's ``read_source`` + the GX
validation core -> ``prepare_split`` -> ``train_candidates`` (time-ordered CV, fit on normal,
threshold from the alert budget on validation) -> ``evaluate_candidates`` on the holdout ->
``decide`` (gates, pilot rule). Nothing is tuned on the holdout. Metrics are point-wise at the
operating threshold (never point-adjusted); false alarms are alert episodes overlapping no
labelled anomaly, per asset-day.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

import plantwatch  # noqa: F401  (telemetry off first)
from plantwatch import gating, training
from plantwatch.config import Params, load_params
from plantwatch.paths import ProjectPaths

REPO = Path(__file__).resolve().parents[1]
DATASETS = {
    "sim": ("simulator (params.yaml fleet)", REPO / "params.yaml"),
    "smd": ("SMD machine-2-1", REPO / "params" / "smd.yaml"),
    "asd": ("ASD omi-1", REPO / "params" / "asd.yaml"),
    "nab": ("NAB machine temperature", REPO / "params" / "nab.yaml"),
}
console = Console(width=160)
log = logging.getLogger("bench.results")


def load_clean(params: Params) -> pd.DataFrame:
    """The validated canonical frame: simulator output, or the dataset file through ingest + GX."""
    if params.data.sources == ["data/raw/telemetry.parquet"]:
        from plantwatch.simulate import simulate_fleet

        return simulate_fleet(params.simulate, params.data)
    from plantwatch.ingest import concat_canonical, read_source, resolve_sources
    from plantwatch.validation import validate_frame

    paths = ProjectPaths.at(REPO)
    sources = resolve_sources(params.data.sources, paths)
    frame = concat_canonical([read_source(p, params.data) for p in sources], params.data)
    outcome = validate_frame(frame, params.data, params.validate_)
    if outcome.status == "rejected":
        raise SystemExit(f"validation rejected the batch: {outcome}")
    return outcome.clean


def run(name: str, params_path: Path) -> dict[str, Any]:
    params = load_params(params_path)
    start = time.perf_counter()
    clean = load_clean(params)
    split, _ = training.prepare_split(clean, params.split, train_rows=params.data.train_rows,
                                      gates=params.gates)  # the holdout the features stage cuts
    settings = training.Settings(data=params.data, features=params.features, train=params.train,
                                 rules=params.rules)
    result = training.train_candidates(split.train, split.validation, settings, params.scale,
                                       official_train_rows=params.data.train_rows is not None)
    ev = gating.evaluate_candidates(result.bundles, split.holdout, split.validation, result.cv_scores,
                                    params.gates, params.train.episode_gap)
    decision = gating.decide(ev.holdout, ev.cv, params.gates, production=None, review_labels_used=0)
    return {"name": name, "holdout": ev.holdout, "cv": ev.cv, "decision": decision,
            "rows": split.counts, "seconds": time.perf_counter() - start,
            "episodes": ev.holdout_episodes}


def _f(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def rows_of(r: dict[str, Any]) -> list[list[str]]:
    out = []
    for cand in ("baseline", "custom"):
        h, c = r["holdout"][cand], r["cv"][cand]["pr_auc"]
        out.append([
            r["name"], cand, _f(h["pr_auc"]), _cv(c),
            _f(h["event_recall"], 2), _f(h["f1"]), _f(h["false_alarms_per_asset_day"], 2),
            _verdict(r["decision"]) if r["decision"]["chosen"] == cand else "",
        ])
    return out


def _cv(c: dict[str, Any]) -> str:
    """CV PR-AUC over the judged folds (enough fault episodes) and how many of all folds those are."""
    judged = f"{_f(c.get('n'), 0)}/{_f(c.get('folds'), 0)} folds judged"
    if c.get("n") in (None, 0) or not math.isfinite(c.get("n") or math.nan):
        return judged
    return f"{_f(c['mean'])} [{_f(c['ci_low'])}, {_f(c['ci_high'])}], {judged}"


def _verdict(decision: dict[str, Any]) -> str:
    if decision["passed"]:
        return "chosen, passed"
    failed = [g["name"] for g in decision["gates"] if not g["passed"]]
    return "chosen, failed: " + ", ".join(failed)


HEADER = ["data", "model", "holdout PR-AUC", "CV PR-AUC mean [95% CI] over judged folds", "event recall",
          "F1 (point-wise)", "false alarms / asset-day", "gates"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    results = []
    for key in args.datasets:
        label, path = DATASETS[key]
        r = run(label, path)
        console.print(f"{label}: {r['seconds']:.0f} s, holdout rows {r['rows']['holdout']:,}, "
                      f"{r['episodes']} labelled episodes in the holdout; {r['decision']['notes'][0]}")
        results.append(r)
    table = Table(*HEADER, title="baseline vs custom (holdout = latest period, never trained on)")
    for r in results:
        for row in rows_of(r):
            table.add_row(*row)
    console.print(table)
    if args.markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(row) + " |" for r in results for row in rows_of(r)]
        print("\n".join(lines))


if __name__ == "__main__":
    main()
