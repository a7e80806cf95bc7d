"""Training scale benchmark: wall time and peak memory of the train stage at 10k / 100k / 1M rows.

Run: ``.venv/bin/python bench/train_scale.py`` (``--sizes 10000 100000`` for a shorter run).
Goal at 1M rows: <= 5 minutes and <= 4 GB.

Data: the fleet simulator, 6 pumps x 6 sensors at 1-minute readings, days chosen to give the
row count. What is timed is what ``dvc repro`` runs for features + train: the time split, then
``train_candidates`` (feature fitting and featurising, 5-fold time-ordered CV of both candidates,
threshold calibration, final fits) with params.yaml's ``scale`` block (local processes unless a Dask
cluster is named). Each size runs in a fresh subprocess; the parent samples the summed RSS of that
subprocess and all its children (the loky workers) every ``--sample-s`` seconds, so the peak is the
whole process tree's, not one process's.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
ASSETS = 6
READINGS_PER_DAY = 1440
GOAL_S, GOAL_GB = 300.0, 4.0
console = Console(width=140)


def child(rows: int, params_path: Path) -> None:
    """Runs inside the measured subprocess: simulate (untimed), then split + train (timed)."""
    import plantwatch  # noqa: F401  (telemetry off first)
    from plantwatch import training
    from plantwatch.config import load_params
    from plantwatch.simulate import simulate_fleet

    params = load_params(params_path)
    days = rows / (ASSETS * READINGS_PER_DAY)
    frame = simulate_fleet(params.simulate, params.data, assets=ASSETS, days=days)
    start = time.perf_counter()
    split, _ = training.prepare_split(frame, params.split)
    settings = training.Settings(data=params.data, features=params.features, train=params.train,
                                 rules=params.rules)
    split_s = time.perf_counter() - start
    result = training.train_candidates(split.train, split.validation, settings, params.scale)
    total_s = time.perf_counter() - start
    print(json.dumps({"rows": len(frame), "split_s": split_s, "total_s": total_s,
                      "folds": len(result.folds), "candidates": list(result.bundles)}))


def measure(rows: int, params_path: Path, sample_s: float) -> dict:
    """Run one size in a subprocess and sample its process tree's memory."""
    cmd = [sys.executable, __file__, "--child", str(rows), "--params", str(params_path)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [ps, *ps.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(sample_s)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"size {rows} failed (exit {proc.returncode}):\n{err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update({"peak_gb": peak / 1e9, "wall_s": time.perf_counter() - start})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--sample-s", type=float, default=0.2)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        logging.basicConfig(level=logging.WARNING)
        child(args.child, args.params)
        return
    table = Table("rows", "split s", "features + 5-fold CV + fits s", "process wall s", "peak RSS (tree) GB",
                  "goal", title=f"train stage at scale ({ASSETS} assets x 6 sensors, simulator)")
    for rows in args.sizes:
        r = measure(rows, args.params, args.sample_s)
        ok = r["total_s"] <= GOAL_S and r["peak_gb"] <= GOAL_GB
        table.add_row(f"{r['rows']:,}", f"{r['split_s']:.1f}", f"{r['total_s']:.1f}", f"{r['wall_s']:.1f}",
                      f"{r['peak_gb']:.2f}", "ok" if ok else f"> {GOAL_S:.0f} s or > {GOAL_GB:.0f} GB")
        console.print(f"{rows:,} rows done: {r['total_s']:.1f} s, {r['peak_gb']:.2f} GB")
    console.print(table)


if __name__ == "__main__":
    main()
