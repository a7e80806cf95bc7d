"""Drift-check benchmark: false alarms, detection and speed of plantwatch's drift check.

Run: ``.venv/bin/python bench/drift.py`` (about 5-8 minutes on 2 cores; ``--quick`` for a smoke run).

Data: the fleet simulator. For each fleet seed, one long "normal" run; the reference is the train
part of its first ``simulate.days`` (exactly what the features stage writes) and every later day is a
same-distribution batch (same pumps, same physics, fault episodes included). Regime-drift batches
come from ``scenario="drift"`` of the same fleet after the reference window.

Prints three tables:
1. per-batch verdicts over >= 200 same-distribution daily batches and the drift batches, for
   plantwatch's check (exactly ``plantwatch.drift.check_drift`` with params.yaml) and, for contrast,
   Evidently's default test, KS, the same effect-size test without the matched reference, and
   plantwatch's test on 2-hour batches (why a batch must cover a day);
2. the policy (k of m, cooldown) run over those batch streams: retrains triggered;
3. seconds per 100k-row check vs ``Report([DataDriftPreset()])`` on the same rows.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

import plantwatch  # noqa: F401  (telemetry off before evidently is imported)
from plantwatch import schema
from plantwatch.config import MonitorConfig, Params, load_params
from plantwatch.drift import PolicyState, check_drift, decide, match_reference
from plantwatch.features import time_split
from plantwatch.simulate import simulate_fleet

REPO = Path(__file__).resolve().parents[1]
DAY = pd.Timedelta(days=1)
console = Console(width=150)
log = logging.getLogger("bench.drift")


@dataclass
class Rates:
    name: str
    normal: list[bool]
    drifted: list[bool]

    def row(self) -> list[str]:
        fa, det = sum(self.normal), sum(self.drifted)
        n, m = len(self.normal), len(self.drifted)
        return [
            self.name,
            str(n),
            f"{fa} ({fa / n:.1%})" if n else "—",
            str(m),
            f"{det} ({det / m:.1%})" if m else "—",
        ]


def windows(
    frame: pd.DataFrame, start: pd.Timestamp, length: pd.Timedelta, count: int
) -> Iterator[pd.DataFrame]:
    """``count`` consecutive windows of ``length`` from ``start`` (all assets)."""
    ts = frame[schema.TIMESTAMP]
    for i in range(count):
        lo = start + i * length
        part = frame[(ts >= lo) & (ts < lo + length)]
        if not part.empty:
            yield part


def evidently_rule(method: str | None, threshold: float | None, share: float) -> Callable[..., bool]:
    """A batch verdict from Evidently's own stattest (the function ``ValueDrift`` calls)."""
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    def verdict(reference: pd.DataFrame, batch: pd.DataFrame, sensors: Sequence[str]) -> bool:
        drifted = 0
        for s in sensors:
            test = get_stattest(reference[s], batch[s], ColumnType.Numerical, method)
            drifted += bool(test(reference[s], batch[s], ColumnType.Numerical, threshold).drifted)
        return drifted / len(sensors) >= share

    return verdict


def study(
    params: Params, seeds: Sequence[int], normal_days: int, drift_days: int, short: int
) -> tuple[list[Rates], list[list[str]], str]:
    cfg = params.monitor
    sensors = params.data.sensor_names
    budget = params.train.alert_budget
    rules = {
        "Evidently default (normed Wasserstein 0.1, whole reference, share >= 0.5)": evidently_rule(
            None, None, 0.5
        ),
        "KS p < 0.05, whole reference, share >= 0.5": evidently_rule("ks", 0.05, 0.5),
        "plantwatch test without matched reference": evidently_rule(
            cfg.default.method, cfg.default.threshold, cfg.drift_share
        ),
    }
    rates = {name: Rates(name, [], []) for name in rules}
    mine = Rates("plantwatch check (params.yaml: matched reference, effect size, >= 1 day)", [], [])
    short_rates = Rates(f"plantwatch test on 2-hour batches (matched reference; {short} per fleet)", [], [])
    policy_rows = []
    scores: dict[str, list[float]] = {"normal": [], "drift": []}
    for seed in seeds:
        full = simulate_fleet(
            params.simulate, params.data, seed=seed, days=params.simulate.days + normal_days
        )
        t0 = full[schema.TIMESTAMP].min()
        train_end = t0 + pd.Timedelta(days=params.simulate.days)
        reference = time_split(full[full[schema.TIMESTAMP] < train_end], params.split).train
        drift = simulate_fleet(
            params.simulate, params.data, scenario="drift", seed=seed, start=train_end, days=drift_days
        )
        for kind, frame, count in (("normal", full, normal_days), ("drift", drift, drift_days)):
            state, at = PolicyState(), []
            for i, batch in enumerate(windows(frame, train_end, DAY, count)):
                check = check_drift(
                    reference,
                    batch,
                    sensors,
                    cfg,
                    interval_s=params.data.interval_s,
                    alert_budget=budget,
                    batch_id=f"{seed}-{kind}-{i}",
                )
                (mine.normal if kind == "normal" else mine.drifted).append(bool(check.result.drift))
                scores[kind].extend(c.score for c in check.result.sensors.values())
                decision, state = decide(state, f"{seed}-{kind}-{i}", check.result, check.stats, cfg, budget)
                if decision.retrain == "triggered":
                    at.append(i + 1)
                for name, rule in rules.items():
                    bucket = rates[name].normal if kind == "normal" else rates[name].drifted
                    bucket.append(rule(reference, batch, sensors))
            policy_rows.append(
                [f"fleet seed {seed}", kind, str(count), str(len(at)), ", ".join(map(str, at)) or "—"]
            )
            log.info("seed %d %s done", seed, kind)
        short_rule = evidently_rule(cfg.default.method, cfg.default.threshold, cfg.drift_share)
        for kind, frame in (("normal", full), ("drift", drift)):
            step = (normal_days if kind == "normal" else drift_days) * DAY / short
            for i in range(short):
                lo = train_end + i * step
                part = frame[
                    (frame[schema.TIMESTAMP] >= lo) & (frame[schema.TIMESTAMP] < lo + pd.Timedelta(hours=2))
                ]
                matched = match_reference(reference, part, cfg).frame
                verdict = short_rule(matched, part, sensors)
                (short_rates.normal if kind == "normal" else short_rates.drifted).append(verdict)
    margin = (
        "plantwatch check: per-sensor effect size (normed Wasserstein) is at most "
        f"{max(scores['normal']):.3f} on same-distribution batches and at least "
        f"{min(scores['drift']):.3f} on drift batches; "
        f"threshold {cfg.default.threshold:g}"
    )
    return [mine, *rates.values(), short_rates], policy_rows, margin


def timing(params: Params, rows: int, repeats: int) -> list[str]:
    """Median seconds of plantwatch's check vs DataDriftPreset on the same ``rows``-row batch."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    cfg: MonitorConfig = params.monitor
    sensors = params.data.sensor_names
    per_day = params.simulate.assets * 86_400 / params.data.interval_s
    days = params.simulate.days + int(np.ceil(rows / per_day)) + 1
    full = simulate_fleet(params.simulate, params.data, seed=params.simulate.seed, days=days)
    t0 = full[schema.TIMESTAMP].min()
    train_end = t0 + pd.Timedelta(days=params.simulate.days)
    reference = time_split(full[full[schema.TIMESTAMP] < train_end], params.split).train
    span = pd.Timedelta(seconds=float(np.ceil(rows / params.simulate.assets)) * params.data.interval_s)
    ts = full[schema.TIMESTAMP]
    batch = full[(ts >= train_end) & (ts < train_end + span)]  # every asset, ~rows readings in all
    definition = DataDefinition(numerical_columns=list(sensors))

    def ours() -> None:
        check_drift(
            reference,
            batch,
            sensors,
            cfg,
            interval_s=params.data.interval_s,
            alert_budget=params.train.alert_budget,
        )

    def preset() -> None:
        Report([DataDriftPreset()]).run(
            Dataset.from_pandas(batch[list(sensors)], data_definition=definition),
            Dataset.from_pandas(reference[list(sensors)], data_definition=definition),
        )

    def median_time(fn: Callable[[], None]) -> float:
        fn()  # warm-up (imports, caches)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    t_ours, t_preset = median_time(ours), median_time(preset)
    return [
        f"{len(batch):,}",
        f"{len(reference):,}",
        f"{t_ours:.2f}",
        f"{t_preset:.2f}",
        f"{t_preset / t_ours:.1f}x",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7], help="fleet seeds (one fleet each)")
    parser.add_argument(
        "--normal-days", type=int, default=100, help="same-distribution daily batches per fleet"
    )
    parser.add_argument("--drift-days", type=int, default=30, help="regime-drift daily batches per fleet")
    parser.add_argument("--short", type=int, default=100, help="2-hour batches per fleet and kind")
    parser.add_argument("--rows", type=int, default=100_000, help="batch rows for the timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 + 5 days, 1 fleet, 20k rows")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.seeds, args.normal_days, args.drift_days, args.short, args.rows, args.repeats = (
            [42],
            10,
            5,
            10,
            20_000,
            1,
        )
    params = load_params(args.params)

    rates, policy_rows, margin = study(params, args.seeds, args.normal_days, args.drift_days, args.short)
    table = Table(title="Per-batch drift verdicts (daily batches unless stated)")
    for col in ("check", "same-distribution batches", "false alarms", "regime-drift batches", "detected"):
        table.add_column(col)
    for r in rates:
        table.add_row(*r.row())
    console.print(table)
    console.print(margin)

    cfg = params.monitor
    policy = Table(
        title=f"Policy: retrain when drift in {cfg.k} of {cfg.m} batches, cooldown {cfg.cooldown_batches}"
    )
    for col in ("stream", "kind", "daily batches", "retrains triggered", "triggered at batch"):
        policy.add_column(col)
    for row in policy_rows:
        policy.add_row(*row)
    console.print(policy)
    console.print(
        "No retrain completes in this replay (the reference never changes), so a request counts as lost "
        f"after retrain_timeout_batches={cfg.retrain_timeout_batches} and drift that persists triggers again."
    )

    speed = Table(title=f"Seconds per check (median of {args.repeats}, after a warm-up)")
    for col in ("batch rows", "reference rows", "plantwatch check", "DataDriftPreset", "speed-up"):
        speed.add_column(col)
    speed.add_row(*timing(params, args.rows, args.repeats))
    console.print(speed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
