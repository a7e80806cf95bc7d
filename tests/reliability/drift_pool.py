"""Run the real drift check (``plantwatch.drift.check_drift``) over many batches in worker processes.

Why: the monitoring calibration needs >= 200 Evidently checks of about 1 s each; they are
independent of each other (only the policy, :func:`plantwatch.drift.decide`, carries state from
batch to batch), so the checks run in a small pool and the policy runs afterwards, in batch order,
in the caller. Results are identical to a sequential run: the check is deterministic.

Workers are started with the ``spawn`` method (forking the multi-threaded pytest process is
unsafe); each receives the reference and the monitor config once, through the pool initializer,
and returns only the picklable parts of a check (``DriftResult``, ``BatchStats``), not the
Evidently snapshot. The whole run is bounded in time; on timeout the pending checks are cancelled.

Kept apart from the test module so that a worker imports only what a check needs.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from typing import Any

import pandas as pd

from plantwatch.config.monitor import MonitorConfig
from plantwatch.drift import BatchStats, DriftResult, check_drift

#: Batches handed to a worker per round trip (fewer messages, still an even split of 210 checks).
CHUNK = 5

_SETUP: dict[str, Any] = {}


@dataclass(frozen=True)
class Checked:
    """One batch's drift check, without its snapshot."""

    batch_id: str
    result: DriftResult
    stats: BatchStats


def _init(
    reference: pd.DataFrame, sensors: list[str], cfg: MonitorConfig, interval_s: float, alert_budget: float
) -> None:
    """Pool initializer: what every check of this run shares, sent once per worker."""
    _SETUP.update(reference=reference, sensors=sensors, cfg=cfg, interval_s=interval_s)
    _SETUP["alert_budget"] = alert_budget


def _check(item: tuple[str, pd.DataFrame]) -> Checked:
    batch_id, batch = item
    s = _SETUP
    check = check_drift(s["reference"], batch, s["sensors"], s["cfg"], interval_s=s["interval_s"],
                        alert_budget=s["alert_budget"], batch_id=batch_id)  # fmt: skip
    return Checked(batch_id, check.result, check.stats)


def check_batches(
    reference: pd.DataFrame,
    batches: Sequence[tuple[str, pd.DataFrame]],
    sensors: list[str],
    cfg: MonitorConfig,
    *,
    interval_s: float,
    alert_budget: float,
    workers: int,
    timeout_s: float,
) -> list[Checked]:
    """``check_drift`` of every ``(batch_id, batch)`` against ``reference``, in input order.

    Raises ``TimeoutError`` (with the number of checks done) when the run takes over ``timeout_s``.
    """
    done: list[Checked] = []
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init,
        initargs=(reference, sensors, cfg, interval_s, alert_budget),
    )
    try:
        for checked in pool.map(_check, batches, timeout=timeout_s, chunksize=CHUNK):
            done.append(checked)
    except FuturesTimeout:
        raise TimeoutError(f"stopped after {len(done)} of {len(batches)} checks ({timeout_s:g} s)") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return done
