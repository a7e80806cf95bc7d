"""Core of POST /feedback: token refusals write nothing, good feedback labels or creates items."""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Any

import pytest

from plantwatch.errors import HttpError
from plantwatch.review import (
    FeedbackAuthError,
    FeedbackDisabled,
    FeedbackForbidden,
    FeedbackUnauthorized,
    ReviewInputError,
    ReviewItemNotFound,
    ReviewQueue,
    submit_feedback,
)

TOKEN = "s3cret-token-value"


@pytest.fixture()
def queue(project: Path) -> ReviewQueue:
    q = ReviewQueue(project / "data" / "review" / "queue.sqlite")
    q.enqueue(
        [
            {"asset": "pump-1", "timestamp": "2024-02-01T10:00:00", "score": 0.72, "threshold": 0.8,
             "model_version": "v1", "decision": "review"},
            {"asset": "pump-1", "timestamp": "2024-02-01T10:01:00", "score": 0.93, "threshold": 0.8,
             "model_version": "v1", "decision": "alert"},
        ]
    )
    return q


def _nothing_written(q: ReviewQueue) -> bool:
    stats = q.stats()
    return stats.total == 2 and stats.labelled == 0 and stats.history_rows == 0


@pytest.mark.parametrize(
    ("provided", "expected", "error", "status", "message"),
    [
        (TOKEN, None, FeedbackDisabled, 403, "feedback disabled: no token configured"),
        (TOKEN, "", FeedbackDisabled, 403, "feedback disabled: no token configured"),
        (None, TOKEN, FeedbackUnauthorized, 401, "missing token"),
        ("", TOKEN, FeedbackUnauthorized, 401, "missing token"),
        ("s3cret-token-valuX", TOKEN, FeedbackForbidden, 403, "wrong token"),
        ("sécret", TOKEN, FeedbackForbidden, 403, "wrong token"),  # non-ASCII must not crash
    ],
)
def test_token_refusals_write_nothing_and_never_echo_the_token(
    queue: ReviewQueue, caplog: pytest.LogCaptureFixture,
    provided: str | None, expected: str | None, error: type[FeedbackAuthError], status: int, message: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    payload = {"id": 1, "verdict": "anomaly", "by": "ann"}
    with pytest.raises(error, match=message) as err:
        submit_feedback(queue, payload, provided, expected)
    assert isinstance(err.value, HttpError) and err.value.http_status == status
    assert TOKEN not in str(err.value) and (not provided or provided not in str(err.value))
    assert TOKEN not in caplog.text
    assert _nothing_written(queue)


def test_token_is_compared_in_constant_time(queue: ReviewQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("plantwatch.review.hmac.compare_digest", spy)
    submit_feedback(queue, {"id": 1, "verdict": "normal", "by": "ann"}, TOKEN, TOKEN)
    assert calls == [(TOKEN.encode(), TOKEN.encode())]


def test_feedback_labels_a_queued_item_by_id(queue: ReviewQueue) -> None:
    result = submit_feedback(queue, {"id": 2, "verdict": "normal", "by": "ann", "note": "valve test"},
                             TOKEN, TOKEN)
    assert result.to_dict() == {
        "item_id": 2, "verdict": "normal", "recorded": True, "created": False, "status": "labelled"
    }
    item = queue.get(2)
    assert (item.verdict, item.reviewer, item.note) == ("normal", "ann", "valve test")
    again = submit_feedback(queue, {"id": 2, "verdict": "normal", "by": "ann", "note": "valve test"},
                            TOKEN, TOKEN)
    assert not again.recorded and len(queue.history(2)) == 1


def test_disputed_reading_not_in_queue_becomes_a_labelled_item(queue: ReviewQueue) -> None:
    payload = {"asset": "fan-7", "timestamp": "2024-02-03T07:30:00Z", "verdict": "normal", "by": "ops",
               "note": "alert during planned maintenance"}
    result = submit_feedback(queue, payload, TOKEN, TOKEN)
    assert result.created and result.recorded
    item = queue.get(result.item_id)
    assert (item.asset, item.timestamp, item.origin, item.decision, item.status, item.verdict) == (
        "fan-7", "2024-02-03T07:30:00", "feedback", "alert", "labelled", "normal"
    )
    assert item.score is None and item.model_version == ""
    # the same feedback again finds that item instead of creating another one
    again = submit_feedback(queue, payload, TOKEN, TOKEN)
    assert again.item_id == result.item_id and not again.created and not again.recorded
    assert queue.stats().feedback_items == 1


def test_feedback_by_reading_labels_the_queued_item(queue: ReviewQueue) -> None:
    payload = {"asset": "pump-1", "timestamp": "2024-02-01 10:01", "verdict": "anomaly", "by": "ann"}
    result = submit_feedback(queue, payload, TOKEN, TOKEN)
    assert (result.item_id, result.created) == (2, False)
    assert queue.get(2).verdict == "anomaly" and queue.stats().total == 2
    # pinned to a model version that never queued it: a new labelled item for that version
    other = submit_feedback(queue, payload | {"model_version": "v9"}, TOKEN, TOKEN)
    assert other.created and queue.get(other.item_id).model_version == "v9"


@pytest.mark.parametrize(
    ("payload", "error", "status", "match"),
    [
        ({"id": 99, "verdict": "anomaly", "by": "ann"}, ReviewItemNotFound, 404, "review item 99"),
        ({"id": 1, "verdict": "maybe", "by": "ann"}, ReviewInputError, 400, "verdict: Input should be"),
        ({"id": 1, "verdict": "anomaly"}, ReviewInputError, 400, "by"),
        ({"id": 1, "verdict": "anomaly", "by": "ann", "extra": 1}, ReviewInputError, 400, "unknown field"),
        ({"id": "1", "verdict": "anomaly", "by": "ann"}, ReviewInputError, 400, "id"),
        ({"verdict": "anomaly", "by": "ann"}, ReviewInputError, 400, "give id, or asset"),
        ({"id": 1, "asset": "pump-1", "verdict": "anomaly", "by": "ann"}, ReviewInputError, 400, "not both"),
        ({"asset": "pump-1", "timestamp": "soon", "verdict": "anomaly", "by": "ann"},
         ReviewInputError, 400, "timestamp"),
        ({"id": 1, "verdict": "anomaly", "by": "ann", "note": "x" * 5000}, ReviewInputError, 400, "note"),
        (["not", "an", "object"], ReviewInputError, 400, "JSON object"),
    ],
)
def test_bad_feedback_is_refused_and_writes_nothing(
    queue: ReviewQueue, payload: Any, error: type[HttpError], status: int, match: str
) -> None:
    with pytest.raises(error, match=match) as err:
        submit_feedback(queue, payload, TOKEN, TOKEN)
    assert err.value.http_status == status
    assert _nothing_written(queue)
