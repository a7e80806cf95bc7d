"""``plantwatch review …``: work the human review queue from a terminal.

Thin shell over :mod:`plantwatch.review` (the same functions the service's ``POST /feedback`` and the
training pipeline use). Bad verdicts/ids are one line on stderr: exit 2 for malformed input, 1 for an
id that is not in the queue.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from plantwatch.cli import common
from plantwatch.review import (
    STATUS_OPEN,
    ReviewInputError,
    ReviewItem,
    ReviewItemNotFound,
    ReviewQueue,
    ReviewStats,
    check_status,
    check_verdict,
    count_scored_readings,
    summarize_reviews,
)

review_app = typer.Typer(
    name="review",
    help="Human review queue: list items, show one, label it, queue statistics.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``review`` command group to the root app."""
    app.add_typer(review_app, name="review")


def _open() -> tuple[common.Context, ReviewQueue | None]:
    """The project's queue, or None when nothing was ever enqueued: looking must not create files."""
    ctx = common.load()
    if not ctx.paths.resolve(ctx.params.review.db_path).exists():
        return ctx, None
    return ctx, ReviewQueue.for_project(ctx.paths, ctx.params.review)


def _must_open(item_id: int) -> ReviewQueue:
    ctx, queue = _open()
    if queue is None:
        raise ReviewItemNotFound(
            f"review item {item_id} not found (no review queue at {ctx.params.review.db_path} yet)"
        )
    return queue


def _item_id(text: str) -> int:
    """IDs arrive as text so that a malformed one is our one-line error, not Typer's usage box."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ReviewInputError(f"item id {text!r}: expected a positive integer")
    return value


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _items_table(items: list[ReviewItem]) -> Table:
    table = Table(title=f"review items ({len(items)})")
    for col in ("id", "asset", "timestamp", "score", "threshold", "decision", "status", "verdict", "by"):
        table.add_column(col)
    for it in items:
        table.add_row(
            str(it.id), it.asset, it.timestamp, _fmt(it.score), _fmt(it.threshold), it.decision,
            it.status, it.verdict or "-", it.reviewer or "-",
        )
    return table


@review_app.command("list")
@common.friendly
def list_items(
    status: Annotated[str, typer.Option(help="open | labelled | all")] = STATUS_OPEN,
    limit: Annotated[int | None, typer.Option(help="Rows to show (default: review.list_limit)")] = None,
    asset: Annotated[str | None, typer.Option(help="Only this asset")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Queue items, oldest first."""
    check_status(status)
    ctx, queue = _open()
    limit = limit or ctx.params.review.list_limit
    items = [] if queue is None else queue.list(status=status, limit=limit, asset=asset)
    if as_json:
        common.echo_json([it.to_dict() for it in items])
    else:
        common.console.print(_items_table(items))


@review_app.command("show")
@common.friendly
def show(
    item_id: Annotated[str, typer.Argument(metavar="ID", help="Queue item id")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """One item: the reading, the model's explanation and every verdict given on it."""
    wanted = _item_id(item_id)
    queue = _must_open(wanted)
    item = queue.get(wanted)
    history = queue.history(item.id)
    if as_json:
        common.echo_json({**item.to_dict(), "history": [h.to_dict() for h in history]})
        return
    fields = Table(title=f"review item {item.id}", show_header=False)
    fields.add_column("field")
    fields.add_column("value")
    for key, value in item.to_dict().items():
        fields.add_row(key, _fmt(value, digits=6))
    common.console.print(fields)
    verdicts = Table(title="verdict history")
    for col in ("at", "verdict", "by", "note"):
        verdicts.add_column(col)
    for h in history:
        verdicts.add_row(h.at, h.verdict, h.reviewer, h.note or "")
    common.console.print(verdicts)


@review_app.command("label")
@common.friendly
def label(
    item_id: Annotated[str, typer.Argument(metavar="ID", help="Queue item id")],
    verdict: Annotated[str, typer.Option(help="anomaly | normal")],
    by: Annotated[str, typer.Option("--by", help="Reviewer name (kept in the verdict history)")],
    note: Annotated[str | None, typer.Option(help="Free-text note")] = None,
) -> None:
    """Give a verdict; repeating your current verdict changes nothing."""
    wanted = _item_id(item_id)
    check_verdict(verdict)
    queue = _must_open(wanted)
    result = queue.label(wanted, verdict, by, note)
    what = "labelled" if result.recorded else "unchanged, already"
    common.console.print(f"item {result.item_id}: {what} {result.verdict} by {result.reviewer}")


def _stats_table(stats: ReviewStats) -> Table:
    table = Table(title="review queue", show_header=False)
    table.add_column("figure")
    table.add_column("value")
    rows = [
        ("items (open / labelled)", f"{stats.total} ({stats.open} / {stats.labelled})"),
        ("verdicts", ", ".join(f"{k} {v}" for k, v in stats.by_verdict.items())),
        ("items by decision", ", ".join(f"{k} {v}" for k, v in stats.by_decision.items())),
        ("from feedback", str(stats.feedback_items)),
        ("label actions (history)", str(stats.history_rows)),
        ("alerts confirmed", f"{stats.alerts_confirmed} of {stats.alerts_reviewed} reviewed "
         f"({_share(stats.alert_confirmed_share)})"),
        ("review-band confirmed", _share(stats.review_confirmed_share)),
        ("time to review (median / mean, s)",
         f"{_fmt(stats.median_time_to_review_s)} / {_fmt(stats.mean_time_to_review_s)}"),
        ("scored readings", _fmt(stats.scored_readings) if stats.scored_readings is not None
         else "- (no inference log)"),
        ("review rate", _share(stats.review_rate)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


@review_app.command("stats")
@common.friendly
def stats(as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False) -> None:
    """Queue figures; the review rate needs the inference log (data/inference) to count scored readings."""
    ctx, queue = _open()
    scored = count_scored_readings(ctx.paths.inference_log)
    result = summarize_reviews([], 0, scored) if queue is None else queue.stats(scored_readings=scored)
    if as_json:
        common.echo_json(result.to_dict())
    else:
        common.console.print(_stats_table(result))
