"""``make bench``: every benchmark in turn, each printing its own table.

Figures are ratios measured within one run where the machine is noisy (served vs in-process, ours vs
Evidently's preset). ``--quick`` runs the smoke sizes; the README's tables come from full runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (script, full-run arguments, quick-run arguments)
BENCHES: list[tuple[str, list[str], list[str]]] = [
    ("model_quality.py", [], ["--sim-seeds", "42"]),
    ("train_scale.py", [], ["--sizes", "10000", "100000"]),
    ("serving.py", [], ["--quick"]),
    ("drift.py", [], ["--quick"]),
    ("results.py", ["--markdown"], ["--markdown", "--datasets", "sim"]),
    ("reliability_soak.py", [], ["--seconds", "30"]),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smoke sizes (minutes instead of an hour)")
    ap.add_argument("--only", nargs="*", help="run only these scripts (e.g. serving.py drift.py)")
    args = ap.parse_args()
    failed = []
    for script, full, quick in BENCHES:
        if args.only and script not in args.only:
            continue
        print(f"\n=== bench/{script} {' '.join(quick if args.quick else full)}", flush=True)
        rc = subprocess.call([sys.executable, str(HERE / script), *(quick if args.quick else full)])
        if rc != 0:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
