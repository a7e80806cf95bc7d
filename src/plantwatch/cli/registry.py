"""CLI of the model registry: promote, models, rollback, audit (thin shells over ``plantwatch.registry``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from plantwatch.cli import common
from plantwatch.cli.common import console, echo_json, friendly
from plantwatch.registry import Registry, VersionInfo
from plantwatch.registry.promotion import promote_from_gate

log = logging.getLogger(__name__)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
#: Narrow-terminal friendly tables (80 columns fit): no outer border, one space between columns.
_COMPACT: dict[str, Any] = {
    "box": box.SIMPLE_HEAD,
    "show_edge": False,
    "pad_edge": False,
    "collapse_padding": True,
}
_METRIC_WIDTH = 7  # "0.123" and one wrapped header word ("recall") per line
_STAGE_STYLE = {"production": "bold green", "candidate": "cyan", "archived": "dim", "rejected": "red"}


def _registry() -> tuple[Registry, common.Context]:
    ctx = common.load()
    return Registry(ctx.paths.root, ctx.params.registry), ctx


def _metric(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) and not isinstance(value, bool) else "—"


def _short(tag: Any) -> str:
    """The version part of a tag (the model name is the same on every row), '' for None."""
    return str(tag).rpartition(":")[2] if tag else ""


def _when(iso: Any) -> str:
    return str(iso or "")[:19].replace("T", " ")


def _versions_table(rows: Sequence[VersionInfo], key_metrics: Sequence[str], name: str) -> Table:
    table = Table(title=f"{name} versions, newest first", **_COMPACT)
    table.add_column("version", overflow="fold", min_width=14)
    table.add_column("created (UTC)", overflow="fold", min_width=10, max_width=10)
    table.add_column("kind")
    table.add_column("stage", no_wrap=True)
    for col in key_metrics:
        table.add_column(col.replace("_", " "), justify="right", overflow="fold", max_width=_METRIC_WIDTH)
    table.add_column("gates", no_wrap=True)
    for info in rows:
        rec = info.record
        table.add_row(
            rec.version,
            _when(rec.created)[:16],
            rec.kind,
            f"[{_STAGE_STYLE.get(info.stage, '')}]{info.stage}[/]",
            *(_metric(rec.metrics.get(m)) for m in key_metrics),
            "yes" if rec.gates_passed else "[red]no[/]",
        )
    return table


@friendly
def promote(
    tag: Annotated[
        str | None, typer.Option("--tag", help="Promote this registered candidate instead of the gate output")
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (recorded in history and audit)")
    ] = None,
) -> None:
    """Register the gate's chosen model and promote it to production (rejected if a gate failed)."""
    reg, ctx = _registry()
    if tag is not None:
        state = reg.promote(tag, reason=reason or "manual promotion")
        console.print(f"[green]production[/] → {state.current}")
        return
    outcome = promote_from_gate(reg, ctx.paths, ctx.params, reason=reason)
    console.print(f"[green]registered and promoted[/] {outcome.version.tag} ({outcome.version.record.kind})")


def models(
    ctx: typer.Context,
    as_json: JsonOpt = False,
) -> None:
    """List registered versions with stage, key metrics and gate result."""
    if ctx.invoked_subcommand is not None:
        return
    _list_models(as_json)


@friendly
def _list_models(as_json: bool) -> None:
    reg, pctx = _registry()
    key = pctx.params.registry.key_metrics
    rows = list(reversed(reg.versions()))
    if as_json:
        echo_json([info.summary() for info in rows])
        return
    if not rows:
        console.print("no versions registered yet (run `plantwatch promote`)")
        return
    console.print(_versions_table(rows, key, pctx.params.registry.model_name))


@friendly
def show(
    tag: Annotated[str, typer.Argument(help="Version tag (name:version or just the version)")],
    as_json: JsonOpt = False,
) -> None:
    """Full metadata of one version plus its model card summary."""
    reg, _ = _registry()
    info = reg.version(tag)
    card = reg.card(info.tag)
    if as_json:
        echo_json({**info.summary(), "record": info.record.to_json(), "card": card})
        return
    rec = info.record
    table = Table(title=f"{rec.tag}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows: list[tuple[str, Any]] = [
        ("stage", info.stage),
        ("created", rec.created),
        ("kind", rec.kind),
        ("registered by", rec.actor),
        ("gates passed", rec.gates_passed),
        *(("rejected because", r) for r in rec.reasons),
        *((k, v) for k, v in rec.lineage.items()),
        *((f"holdout {k}", _metric(v)) for k, v in rec.metrics.items()),
        ("threshold", card["operating_point"]["threshold"]),
        ("review_low", card["operating_point"]["review_low"]),
        ("alert budget", card["operating_point"]["alert_budget"]),
        *(
            (f"gate {g['name']}", f"{g['value']} vs {g['threshold']}: {'pass' if g['passed'] else 'FAIL'}")
            for g in card["gates"]
        ),
        *(("why chosen", n) for n in card["selection"]["why"]),
        *((f"sha256 {name}", digest) for name, digest in rec.files.items()),
        ("model folder", reg.model_dir(rec.tag)),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)


@friendly
def rollback(
    reason: Annotated[str, typer.Option("--reason", help="Why (required; recorded in history and audit)")],
    to: Annotated[str | None, typer.Option("--to", help="Earlier production version to restore")] = None,
) -> None:
    """Make the previous (or the named) production version production again."""
    reg, _ = _registry()
    state = reg.rollback(to=to, reason=reason)
    entry = state.history[-1]
    console.print(f"[yellow]rolled back[/] {entry['from']} → [green]{entry['tag']}[/]")


@friendly
def audit(
    as_json: JsonOpt = False,
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=0, help="Show the last N events (0 = all; default from params)"),
    ] = None,
) -> None:
    """The registry's audit trail: registrations, promotions, rejections, rollbacks, retrain triggers."""
    reg, ctx = _registry()
    n = ctx.params.registry.audit_list_limit if limit is None else limit
    events = reg.audit_events(limit=n or None)
    if as_json:
        echo_json(events)
        return
    table = Table(
        title=f"registry audit log, last {len(events)} events (versions of {reg.cfg.model_name})",
        **_COMPACT,
    )
    table.add_column("at (UTC)", overflow="fold")
    table.add_column("event", no_wrap=True)
    for col in ("actor", "from", "to", "reason"):
        table.add_column(col, overflow="fold")
    for e in events:
        table.add_row(
            _when(e.get("at")),
            e["event"],
            str(e.get("actor") or ""),
            _short(e.get("from")),
            _short(e.get("to")),
            str(e.get("reason") or ""),
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("audit")(audit)
    models_app = typer.Typer(help="Registered model versions.", no_args_is_help=False)
    models_app.callback(invoke_without_command=True)(models)
    models_app.command("show")(show)
    app.add_typer(models_app, name="models")
