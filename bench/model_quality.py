"""Custom model vs. off-the-shelf baseline: holdout PR-AUC on simulator and real datasets.

Usage: ``.venv/bin/python bench/model_quality.py [--params P] [--datasets DIR] [--sim-seeds 42 1 2]``

For every dataset both candidates get the same treatment (``plantwatch.model.fit_candidate``, the
same recipe as the train stage): features fitted on the training part's normal rows, detector fitted
on those rows' features, holdout scored with the whole preceding stream as history.

* Simulator: ``simulate_fleet`` with the params (6 assets x 28 days unless changed) per seed, split
  by ``time_split`` with ``params.split`` (holdout = most recent 20 %).
* Real data (``../shared/datasets``): fit on the official training part (``n_train_rows`` of the
  ``.meta.json``; NAB has none, so its first half, as in the datasets README); the labelled rest is
  shared between validation and holdout (``time_split(train_rows=...)``), PR-AUC on the holdout (the
  latest part). The full labelled part is reported too, as a less noisy second look.

PR-AUC = ``sklearn.metrics.average_precision_score``. Prints a Markdown table (the README's).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from plantwatch import schema
from plantwatch.config import DataConfig, Params, load_params
from plantwatch.features import time_split
from plantwatch.ingest import normalise, read_table
from plantwatch.model import fit_candidate, score_rows
from plantwatch.simulate import simulate_fleet

log = logging.getLogger("bench.model_quality")

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("smd_machine-2-1", "asd_omi-1", "nab_machine_temperature")
DEFAULT_SIM_SEEDS = (42, 1, 2)


@dataclass(frozen=True)
class Row:
    dataset: str
    holdout_rows: int
    holdout_anomalies: int
    baseline: float
    custom: float
    baseline_full: float | None
    custom_full: float | None
    fit_s: float

    @property
    def gain(self) -> float:
        return self.custom - self.baseline


def load_real(directory: Path, name: str) -> tuple[pd.DataFrame, DataConfig]:
    """A benchmark CSV as a canonical frame (via the ingest core) and its data contract."""
    meta = json.loads((directory / f"{name}.meta.json").read_text())
    path = directory / meta["file"]
    raw = read_table(path)
    train_rows = meta.get("n_train_rows") or len(raw) // 2
    data = DataConfig(
        sources=[str(path)], sensors=list(meta["sensor_columns"]), asset_column=None,
        label_column="label", passthrough_columns=[], train_rows=train_rows,
    )
    return normalise(raw, data), data


def evaluate(name: str, frame: pd.DataFrame, params: Params, data: DataConfig) -> Row:
    """Holdout PR-AUC of both candidates on one canonical frame."""
    split = time_split(frame, params.split, train_rows=data.train_rows)
    history = pd.concat([split.train, split.validation, split.holdout])
    n_train, n_val, n_hold = len(split.train), len(split.validation), len(split.holdout)
    in_holdout = np.r_[np.zeros(n_train + n_val, bool), np.ones(n_hold, bool)]
    labelled = np.r_[np.zeros(n_train, bool), np.ones(n_val + n_hold, bool)]
    y = history[schema.LABEL].to_numpy()
    result: dict[str, tuple[float, float | None]] = {}
    t0 = time.perf_counter()
    for kind in ("baseline", "custom"):
        builder, det = fit_candidate(
            kind, split.train, params.features, params.train.model, data.sensor_names,
            default_asset=data.default_asset, seed=params.train.seed,
            fit_on_normal=params.train.fit_on_normal,
        )
        scores = score_rows(builder, det, history)
        full = average_precision_score(y[labelled], scores[labelled]) if data.train_rows else None
        result[kind] = (average_precision_score(y[in_holdout], scores[in_holdout]), full)
    return Row(
        dataset=name, holdout_rows=int(in_holdout.sum()), holdout_anomalies=int(y[in_holdout].sum()),
        baseline=result["baseline"][0], custom=result["custom"][0],
        baseline_full=result["baseline"][1], custom_full=result["custom"][1],
        fit_s=time.perf_counter() - t0,
    )


def table(rows: list[Row]) -> str:
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        "| dataset | holdout rows (anomalous) | baseline PR-AUC | custom PR-AUC | gain "
        "| full test part: baseline / custom |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.dataset} | {r.holdout_rows} ({r.holdout_anomalies}) | {r.baseline:.3f} | {r.custom:.3f} "
            f"| {r.gain:+.3f} | {fmt(r.baseline_full)} / {fmt(r.custom_full)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    ap.add_argument("--sim-seeds", type=int, nargs="*", default=list(DEFAULT_SIM_SEEDS))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)
    rows = []
    for seed in args.sim_seeds:
        frame = simulate_fleet(params.simulate, params.data, seed=seed)
        rows.append(evaluate(f"simulator seed {seed}", frame, params, params.data))
    for name in DATASETS:
        if not (args.datasets / f"{name}.meta.json").is_file():
            log.warning("dataset %s not found under %s: skipped", name, args.datasets)
            continue
        frame, data = load_real(args.datasets, name)
        rows.append(evaluate(name, frame, params, data))
    print(table(rows))  # the benchmark's output is the table itself
    print(f"\n(fit+score time per dataset, both candidates: {', '.join(f'{r.fit_s:.0f}s' for r in rows)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
