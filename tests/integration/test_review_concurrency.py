"""Two processes hammer one review queue: nothing is lost, nothing is corrupted, later verdicts win.

The service (enqueue + POST /feedback) and reviewers on the CLI write the same SQLite file from
separate processes; this is the property that makes that safe.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from plantwatch.review import VERDICTS, ReviewQueue

pytestmark = pytest.mark.integration

N_LABELS = 120  # label calls per process
N_ITEMS = 3  # both processes fight over the same few items
JOIN_TIMEOUT_S = 60
#: A breath between calls: without it the writer that holds the lock wins every race (SQLite's busy
#: handler backs off for milliseconds), and the two histories would barely interleave.
PAUSE_S = 0.002


def _labeller(db: str, name: str, item_ids: list[int], start: Barrier) -> None:
    """Alternate verdicts with a unique note per call, so every call must become a history row."""
    queue = ReviewQueue(db)
    start.wait(JOIN_TIMEOUT_S)
    for i in range(N_LABELS):
        queue.label(item_ids[i % len(item_ids)], VERDICTS[i % 2], name, note=f"{name}-{i}")
        time.sleep(PAUSE_S)


def _enqueuer(db: str, offset: int, start: Barrier) -> None:
    """Create the store at the same moment as the other process, then offer overlapping readings."""
    start.wait(JOIN_TIMEOUT_S)
    queue = ReviewQueue(db)
    for minute in range(offset, offset + 40):
        queue.enqueue(
            [{"asset": "pump-1", "timestamp": f"2024-02-01T10:{minute:02d}:00", "score": 0.7,
              "threshold": 0.8, "model_version": "v1", "decision": "review"}]
        )


def _run_pair(target: object, args_a: tuple[object, ...], args_b: tuple[object, ...]) -> None:
    # fork: children start in milliseconds with plantwatch already imported; safe because the queue
    # keeps no connection open between calls, so no SQLite handle crosses the fork.
    ctx = mp.get_context("fork")
    start = ctx.Barrier(2)  # both children begin writing together, after their (slow) imports
    procs = [ctx.Process(target=target, args=(*a, start)) for a in (args_a, args_b)]  # type: ignore[arg-type]
    for p in procs:
        p.start()
    for p in procs:
        p.join(JOIN_TIMEOUT_S)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join()
    assert [p.exitcode for p in procs] == [0, 0]


def test_concurrent_labelling_from_two_processes_stays_consistent(project: Path) -> None:
    db = project / "data" / "review" / "queue.sqlite"
    queue = ReviewQueue(db)
    ids = queue.enqueue(
        [{"asset": "pump-1", "timestamp": f"2024-02-01T10:0{m}:00", "decision": "review"}
         for m in range(N_ITEMS)]
    )

    _run_pair(_labeller, (str(db), "ann", ids), (str(db), "bob", ids))

    assert queue.integrity_check() == "ok"
    history = queue.history()
    assert len(history) == 2 * N_LABELS  # no lost writes
    assert {h.note for h in history} == {f"{who}-{i}" for who in ("ann", "bob") for i in range(N_LABELS)}
    for who in ("ann", "bob"):  # each writer's actions are stored in the order it made them
        mine = [int(str(h.note).split("-")[1]) for h in history if h.reviewer == who]
        assert mine == list(range(N_LABELS))
    assert [h.at for h in history] == sorted(h.at for h in history)
    switches = sum(a.reviewer != b.reviewer for a, b in zip(history, history[1:], strict=False))
    assert switches > 1, "the two writers never interleaved: this run did not test concurrency"
    for item_id in ids:  # the item shows the last verdict written to its history
        last = [h for h in history if h.item_id == item_id][-1]
        item = queue.get(item_id)
        assert (item.verdict, item.reviewer, item.note, item.labelled_at) == (
            last.verdict, last.reviewer, last.note, last.at
        )
    stats = queue.stats()
    assert (stats.labelled, stats.history_rows) == (N_ITEMS, 2 * N_LABELS)


def test_concurrent_create_and_enqueue_of_overlapping_readings_dedupes(project: Path) -> None:
    db = project / "data" / "review" / "queue.sqlite"  # does not exist yet: both children create it

    _run_pair(_enqueuer, (str(db), 0), (str(db), 20))

    queue = ReviewQueue(db)
    assert queue.integrity_check() == "ok"
    items = queue.list(status="all")
    assert len(items) == 60  # minutes 0..59, the 20 shared ones only once
    assert sorted(i.timestamp for i in items) == [f"2024-02-01T10:{m:02d}:00" for m in range(60)]
    assert [i.id for i in items] == list(range(1, 61))
