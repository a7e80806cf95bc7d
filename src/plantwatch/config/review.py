"""``review:`` block — the human-in-the-loop queue.

The scoring service enqueues borderline (``review``) and ``alert`` readings here; reviewers label
them from the CLI or through ``POST /feedback``; training merges the verdicts back as labels.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, PositiveInt

from plantwatch.config.base import StrictModel

#: Scored decisions that may be put in front of a human (``normal`` readings never are).
QueuedDecision = Literal["review", "alert"]


class ReviewConfig(StrictModel):
    #: SQLite queue file, relative to the project root.
    db_path: str = "data/review/queue.sqlite"
    #: How long a writer waits for another process's transaction before giving up (SQLite busy_timeout).
    busy_timeout_ms: PositiveInt = 10_000
    #: Which scored decisions the service puts in front of a human.
    enqueue_decisions: list[QueuedDecision] = Field(
        default_factory=lambda: list(get_args(QueuedDecision)), min_length=1
    )
    #: Default number of rows ``plantwatch review list`` shows.
    list_limit: PositiveInt = 50
    #: Bounds on free text arriving from reviewers (the feedback endpoint is reachable over HTTP).
    max_name_chars: PositiveInt = 100
    max_note_chars: PositiveInt = 2_000
