"""The review queue store: schema, enqueue/dedupe, listing, labelling, stats, reviewed labels."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from plantwatch.config import ReviewConfig
from plantwatch.errors import HttpError
from plantwatch.review import (
    REVIEWED_LABEL_COLUMNS,
    SCHEMA_VERSION,
    ReviewError,
    ReviewInputError,
    ReviewItemNotFound,
    ReviewQueue,
    candidates_from_scored,
    count_scored_readings,
)

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


class FakeClock:
    """A clock the test moves by hand, so time-to-review figures are exact."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _item(minute: int, *, asset: str = "pump-1", decision: str = "review", version: str = "v1",
          score: float = 0.7) -> dict[str, Any]:
    return {
        "asset": asset,
        "timestamp": f"2024-02-01T10:{minute:02d}:00",
        "score": score,
        "threshold": 0.8,
        "model_version": version,
        "decision": decision,
        "top_sensors": [{"sensor": "vibration", "contribution": 0.6}],
        "reading": {"vibration": 12.5, "temperature": 71.0},
        "source": {"file": "data/inference/date=2024-02-01/part-0.parquet", "row": minute},
    }


@pytest.fixture()
def db(project: Path) -> Path:
    return project / "data" / "review" / "queue.sqlite"


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def queue(db: Path, clock: FakeClock) -> ReviewQueue:
    return ReviewQueue(db, clock=clock)


def _raw(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


# -- schema ----------------------------------------------------------------------------------------


def test_schema_is_wal_versioned_and_created_idempotently(db: Path) -> None:
    q = ReviewQueue(db)
    [item_id] = q.enqueue([_item(1)])
    again = ReviewQueue(db)  # reopening must neither fail nor wipe anything
    assert again.get(item_id).asset == "pump-1"
    assert _raw(db, "PRAGMA journal_mode") == [("wal",)]
    assert _raw(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    tables = {r[0] for r in _raw(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"review_items", "review_verdicts"} <= tables
    with q._connect() as conn:  # busy_timeout is per connection: the queue sets it on each one
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == ReviewConfig().busy_timeout_ms


def test_newer_schema_version_is_refused(db: Path) -> None:
    ReviewQueue(db)
    with closing(sqlite3.connect(db)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ReviewError, match="newer than this plantwatch"):
        ReviewQueue(db)


def test_a_file_that_is_not_a_database_is_one_readable_error(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_text("definitely not sqlite " * 100)
    with pytest.raises(ReviewError, match="queue.sqlite"):
        ReviewQueue(db)


# -- enqueue / list / get ------------------------------------------------------------------------


def test_enqueue_then_get_round_trips_every_field(queue: ReviewQueue) -> None:
    item = _item(5) | {"timestamp": "2024-02-01T11:05:00+01:00"}  # tz-aware input -> naive UTC
    [item_id] = queue.enqueue([item])
    got = queue.get(item_id)
    assert got.timestamp == "2024-02-01T10:05:00"
    assert got.created == T0.isoformat(timespec="microseconds")
    assert (got.asset, got.score, got.threshold, got.model_version, got.decision) == (
        "pump-1", 0.7, 0.8, "v1", "review"
    )
    assert got.top_sensors == [{"sensor": "vibration", "contribution": 0.6}]
    assert got.reading == {"vibration": 12.5, "temperature": 71.0}
    assert got.source == {"file": "data/inference/date=2024-02-01/part-0.parquet", "row": 5}
    assert (got.status, got.verdict, got.reviewer, got.labelled_at, got.origin) == (
        "open", None, None, None, "scoring"
    )


def test_same_reading_and_model_version_is_one_item(queue: ReviewQueue) -> None:
    first = queue.enqueue([_item(1), _item(2)])
    same = _item(1) | {"timestamp": pd.Timestamp("2024-02-01 10:01")}  # other spelling, same instant
    again = queue.enqueue([same, _item(1), _item(1, version="v2")])
    assert again[:2] == [first[0], first[0]]
    assert again[2] not in first  # another model version is another item
    assert len(queue.list(status="all")) == 3
    # re-enqueueing a labelled reading must not reopen it
    queue.label(first[0], "anomaly", "ann")
    queue.enqueue([_item(1)])
    assert queue.get(first[0]).status == "labelled"
    assert sorted(first + [again[2]]) == [1, 2, 3]  # dedupe burns no ids


def test_enqueue_validates_everything_before_writing(queue: ReviewQueue) -> None:
    with pytest.raises(ReviewInputError, match="decision"):
        queue.enqueue([_item(1), _item(2, decision="normal")])
    with pytest.raises(ReviewInputError, match="timestamp"):
        queue.enqueue([_item(1) | {"timestamp": "not a time"}])
    with pytest.raises(ReviewInputError, match="unknown field"):
        queue.enqueue([_item(1) | {"scroe": 1.0}])
    assert queue.list(status="all") == []


def test_nan_in_reading_is_stored_as_null(queue: ReviewQueue) -> None:
    [item_id] = queue.enqueue([_item(1) | {"reading": {"vibration": float("nan"), "rpm": np.float32(3)}}])
    assert queue.get(item_id).reading == {"vibration": None, "rpm": 3.0}


def test_list_filters_by_status_asset_and_limit(queue: ReviewQueue) -> None:
    ids = queue.enqueue([_item(m) for m in range(5)] + [_item(9, asset="fan-2")])
    queue.label(ids[1], "normal", "ann")
    assert [i.id for i in queue.list()] == [ids[0], ids[2], ids[3], ids[4], ids[5]]
    assert [i.id for i in queue.list(status="labelled")] == [ids[1]]
    assert len(queue.list(status="all")) == 6
    assert [i.id for i in queue.list(limit=2)] == [ids[0], ids[2]]
    assert [i.id for i in queue.list(status="all", asset="fan-2")] == [ids[5]]
    with pytest.raises(ReviewInputError, match="status 'closed'"):
        queue.list(status="closed")
    with pytest.raises(ReviewInputError, match="limit"):
        queue.list(limit=0)


def test_get_unknown_item_is_not_found(queue: ReviewQueue) -> None:
    with pytest.raises(ReviewItemNotFound) as err:
        queue.get(42)
    assert isinstance(err.value, HttpError) and err.value.http_status == 404


# -- label -----------------------------------------------------------------------------------------


def test_label_sets_verdict_and_writes_history(queue: ReviewQueue, clock: FakeClock) -> None:
    [item_id] = queue.enqueue([_item(1)])
    clock.advance(90)
    result = queue.label(item_id, "Anomaly ", "ann", note="bearing noise")
    assert result.recorded and result.previous_verdict is None and result.verdict == "anomaly"
    got = queue.get(item_id)
    assert (got.status, got.verdict, got.reviewer, got.note) == (
        "labelled", "anomaly", "ann", "bearing noise"
    )
    assert got.labelled_at == (T0 + timedelta(seconds=90)).isoformat(timespec="microseconds")
    [h] = queue.history(item_id)
    assert (h.item_id, h.verdict, h.reviewer, h.note, h.at) == (
        item_id, "anomaly", "ann", "bearing noise", got.labelled_at
    )


def test_same_verdict_by_same_reviewer_twice_adds_no_history(queue: ReviewQueue) -> None:
    [item_id] = queue.enqueue([_item(1)])
    assert queue.label(item_id, "anomaly", "ann", note="n1").recorded
    repeat = queue.label(item_id, "anomaly", "ann", note="n1")
    assert not repeat.recorded and repeat.previous_verdict == "anomaly"
    assert not queue.label(item_id, "anomaly", "ann").recorded  # no note = "no new information"
    assert len(queue.history(item_id)) == 1
    assert queue.label(item_id, "anomaly", "bob").recorded  # another person confirming is kept
    assert len(queue.history(item_id)) == 2


def test_later_verdict_wins_and_history_keeps_both(queue: ReviewQueue, clock: FakeClock) -> None:
    [item_id] = queue.enqueue([_item(1)])
    queue.label(item_id, "anomaly", "ann")
    clock.advance(5)
    result = queue.label(item_id, "normal", "bob", note="sensor recalibrated")
    assert result.previous_verdict == "anomaly"
    got = queue.get(item_id)
    assert (got.verdict, got.reviewer, got.note) == ("normal", "bob", "sensor recalibrated")
    history = [(h.verdict, h.reviewer) for h in queue.history(item_id)]
    assert history == [("anomaly", "ann"), ("normal", "bob")]
    # ann changing her mind back is a new action again
    assert queue.label(item_id, "anomaly", "ann").recorded
    assert queue.get(item_id).verdict == "anomaly"
    assert len(queue.history()) == 3


@pytest.mark.parametrize(
    ("item_id", "verdict", "by", "note", "error", "match"),
    [
        (1, "maybe", "ann", None, ReviewInputError, "verdict 'maybe'"),
        (1, None, "ann", None, ReviewInputError, "verdict"),
        (1, "anomaly", "  ", None, ReviewInputError, "reviewer is required"),
        (1, "anomaly", "a" * 101, None, ReviewInputError, "reviewer is longer than 100"),
        (1, "anomaly", "ann", "x" * 2001, ReviewInputError, "note is longer than 2000"),
        (7, "anomaly", "ann", None, ReviewItemNotFound, "review item 7 not found"),
    ],
)
def test_bad_label_input_is_refused_and_writes_nothing(
    queue: ReviewQueue, item_id: int, verdict: Any, by: str, note: str | None,
    error: type[Exception], match: str,
) -> None:
    queue.enqueue([_item(1)])
    with pytest.raises(error, match=match):
        queue.label(item_id, verdict, by, note)
    assert queue.history() == [] and queue.get(1).status == "open"


def test_http_statuses_and_exit_codes_of_review_errors() -> None:
    assert (ReviewInputError.http_status, ReviewInputError.exit_code) == (400, 2)
    assert (ReviewItemNotFound.http_status, ReviewItemNotFound.exit_code) == (404, 1)
    assert ReviewError.http_status == 500 and issubclass(ReviewError, HttpError)


# -- stats -----------------------------------------------------------------------------------------


def test_stats_counts_shares_and_time_to_review(queue: ReviewQueue, clock: FakeClock) -> None:
    ids = queue.enqueue(
        [_item(1, decision="alert"), _item(2, decision="alert"), _item(3, decision="alert"),
         _item(4), _item(5), _item(6)]
    )
    clock.advance(60)
    queue.label(ids[0], "anomaly", "ann")          # alert confirmed after 60 s
    clock.advance(60)
    queue.label(ids[1], "normal", "ann")           # alert rejected after 120 s
    queue.label(ids[3], "anomaly", "bob")          # review item confirmed after 120 s
    clock.advance(180)
    queue.label(ids[0], "normal", "bob")           # relabel: time to review keeps the FIRST verdict
    stats = queue.stats()
    assert (stats.total, stats.open, stats.labelled) == (6, 3, 3)
    assert stats.by_verdict == {"anomaly": 1, "normal": 2}
    assert stats.by_decision == {"normal": 0, "review": 3, "alert": 3}
    assert (stats.alerts_reviewed, stats.alerts_confirmed, stats.alert_confirmed_share) == (2, 0, 0.0)
    assert stats.review_confirmed_share == 1.0
    assert stats.history_rows == 4
    assert stats.median_time_to_review_s == 120.0
    assert stats.mean_time_to_review_s == pytest.approx(100.0)
    assert stats.scored_readings is None and stats.review_rate is None
    with_rate = queue.stats(scored_readings=600)
    assert with_rate.review_rate == pytest.approx(6 / 600)


def test_stats_of_an_empty_queue_have_no_shares(queue: ReviewQueue) -> None:
    stats = queue.stats(scored_readings=0)
    assert (stats.total, stats.alert_confirmed_share, stats.median_time_to_review_s, stats.review_rate) == (
        0, None, None, None
    )


def test_count_scored_readings_reads_parquet_footers(project: Path) -> None:
    log_dir = project / "data" / "inference"
    assert count_scored_readings(log_dir) is None
    for day, n in (("2024-02-01", 7), ("2024-02-02", 5)):
        part = log_dir / f"date={day}"
        part.mkdir(parents=True)
        pd.DataFrame({"score": np.zeros(n)}).to_parquet(part / "part-0.parquet")
    (log_dir / "date=2024-02-02" / "broken.parquet").write_bytes(b"PAR1 half-written")
    assert count_scored_readings(log_dir) == 12


# -- reviewed labels and scored-frame candidates ----------------------------------------------------


def test_reviewed_labels_one_per_reading_latest_wins(queue: ReviewQueue, clock: FakeClock) -> None:
    a_v1, a_v2, b, _open = queue.enqueue(
        [_item(1), _item(1, version="v2"), _item(2, asset="fan-2"), _item(3)]
    )
    queue.label(a_v2, "normal", "ann")
    clock.advance(10)
    queue.label(a_v1, "anomaly", "bob")  # same reading judged later under another model version
    queue.label(b, "normal", "ann")
    labels = queue.reviewed_labels()
    assert list(labels.columns) == REVIEWED_LABEL_COLUMNS
    assert str(labels["timestamp"].dtype) == "datetime64[ns]"
    assert str(labels["labelled_at"].dtype) == "datetime64[ns]"
    assert labels[["asset", "label", "reviewer", "review_item_id"]].to_dict("records") == [
        {"asset": "fan-2", "label": 0, "reviewer": "ann", "review_item_id": b},
        {"asset": "pump-1", "label": 1, "reviewer": "bob", "review_item_id": a_v1},
    ]
    assert labels["timestamp"].iloc[1] == pd.Timestamp("2024-02-01 10:01")
    assert labels["labelled_at"].iloc[1] == pd.Timestamp(T0.replace(tzinfo=None) + timedelta(seconds=10))


def test_reviewed_labels_of_an_empty_queue_is_typed_and_empty(queue: ReviewQueue) -> None:
    labels = queue.reviewed_labels()
    assert labels.empty and list(labels.columns) == REVIEWED_LABEL_COLUMNS
    assert str(labels["timestamp"].dtype) == "datetime64[ns]" and str(labels["label"].dtype) == "int64"


def test_candidates_from_scored_keeps_review_and_alert_rows(queue: ReviewQueue) -> None:
    scored = pd.DataFrame(
        {
            "timestamp": pd.date_range("2024-02-01", periods=4, freq="min"),
            "asset": ["pump-1"] * 4,
            "vibration": [1.0, 2.0, np.nan, 4.0],
            "temperature": [70.0, 71.0, 72.0, 73.0],
            "score": np.array([0.1, 0.7, 0.9, 0.75], dtype=np.float32),
            "decision": ["normal", "review", "alert", "review"],
            "top_sensors": [[], [{"sensor": "vibration", "contribution": np.float64(0.5)}], [], []],
        }
    )
    cands = candidates_from_scored(
        scored, model_version="v3", threshold=0.8, sensors=["temperature", "vibration"],
        decisions=["review"], source_file="data/inference/date=2024-02-01/a.parquet",
    )
    assert [c.source for c in cands] == [
        {"row": 1, "file": "data/inference/date=2024-02-01/a.parquet"},
        {"row": 3, "file": "data/inference/date=2024-02-01/a.parquet"},
    ]
    assert cands[0].reading == {"temperature": 71.0, "vibration": 2.0}
    assert cands[0].top_sensors == [{"sensor": "vibration", "contribution": 0.5}]
    ids = queue.enqueue(cands)
    assert queue.get(ids[1]).timestamp == "2024-02-01T00:03:00" and queue.get(ids[1]).model_version == "v3"
    both = candidates_from_scored(scored, model_version="v3", threshold=0.8, sensors=["vibration"])
    assert [c.decision for c in both] == ["review", "alert", "review"]
    assert both[1].reading == {"vibration": None}
