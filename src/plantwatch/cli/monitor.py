"""CLI of the monitor stage: ``plantwatch monitor PATH [--json]`` over ``plantwatch.monitoring``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from plantwatch.cli import common
from plantwatch.cli.common import console, echo_json, friendly
from plantwatch.errors import PlantwatchError

log = logging.getLogger(__name__)

_RETRAIN_STYLE = {
    "triggered": "bold red",
    "cooling down": "yellow",
    "not needed": "green",
    "insufficient data": "dim",
}


def _sensor_table(result: dict[str, Any]) -> Table:
    table = Table(title="per-sensor drift")
    for col in ("sensor", "method", "threshold", "score", "drifted"):
        table.add_column(col, justify="right" if col in ("threshold", "score") else "left")
    rows = dict(result["sensors"])
    if result.get("score"):
        rows["score (model)"] = result["score"]
    for name, col in rows.items():
        table.add_row(
            name,
            col["method"],
            f"{col['threshold']:g}",
            f"{col['score']:.3f}",
            "[red]yes[/]" if col["drifted"] else "no",
        )
    return table


def _print(out: dict[str, Any], synced: str | None) -> None:
    console.print(
        f"batch [bold]{out['batch_id']}[/]: {out['rows']} rows, {out['stats']['span_hours']:.1f} h, "
        f"{out['stats']['assets']} asset(s)"
    )
    if out["validation"]:
        v = out["validation"]
        console.print(
            f"validation: {v['status']}, {v['rows_clean']} clean, {v['rows_quarantined']} quarantined"
        )
    if out["drift"] is None:
        console.print(f"drift: [dim]no decision[/] — {out['reason']}")
    else:
        verdict = "[bold red]DRIFT[/]" if out["drift"] else "[green]no drift[/]"
        console.print(f"drift: {verdict}, drift_share {out['drift_share']:.2f} — {out['reason']}")
        console.print(_sensor_table(out))
    style = _RETRAIN_STYLE.get(out["retrain"], "")
    console.print(f"retrain: [{style}]{out['retrain']}[/] — {out['retrain_reason']}")
    console.print(
        f"guard: {out['guard']}"
        + (f" — [bold red]ROLLBACK[/]: {out['rollback_reason']}" if out["rollback"] else "")
    )
    for line in ([synced] if synced else []) + out["notes"] + out["actions"]:
        console.print(f"  • {line}")
    for line in out["errors"]:
        console.print(f"  [red]✗ {line}[/]")
    console.print(f"report: {out['report']}")


@friendly
def monitor(
    path: Annotated[Path, typer.Argument(help="Batch: a CSV/Parquet file or an inference-log folder")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON")] = False,
) -> None:
    """Check a batch for drift, decide whether to retrain (k of m, cooldown) and record everything."""
    from plantwatch import monitoring
    from plantwatch.registry import Registry

    ctx = common.load()
    batch = monitoring.load_batch(path, ctx.params.data.default_asset)
    batch_id = monitoring.batch_id_for(path)
    registry = Registry(ctx.paths.root, ctx.params.registry)
    synced = None
    try:
        synced = monitoring.sync_production(ctx.paths, ctx.params, registry)
    except PlantwatchError as err:  # no production model yet, or it cannot be loaded: drift still works
        log.warning("post-promotion guard not synced: %s", err)
    outcome = monitoring.monitor_batch(
        batch,
        params=ctx.params,
        paths=ctx.paths,
        batch_id=batch_id,
        validate=monitoring.gx_validator(ctx.params, ctx.paths, batch_id),
        retrain=monitoring.audit_retrain_request(registry),
        rollback=monitoring.registry_rollback(registry),
    )
    out = outcome.to_dict()
    if as_json:
        echo_json(out | {"production_sync": synced})
    else:
        _print(out, synced)
    if outcome.errors:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("monitor")(monitor)
