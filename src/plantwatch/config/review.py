"""``review:`` block — the human-in-the-loop queue."""

from __future__ import annotations

from plantwatch.config.base import StrictModel


class ReviewConfig(StrictModel):
    db_path: str = "data/review/queue.sqlite"
