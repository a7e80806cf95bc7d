"""CLI commands of the data stage(s)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from plantwatch.cli import common
from plantwatch.cli.common import friendly
from plantwatch.errors import DataError, UsageError

if TYPE_CHECKING:
    from plantwatch.validation import ValidationOutcome

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    _register_simulate(app)
    _register_data_commands(app)


# --- simulate --------------------------------------------------------------------------------------
def _register_simulate(app: typer.Typer) -> None:
    app.command("simulate")(simulate)


@friendly
def simulate(
    out: Annotated[Path, typer.Option("--out", help="Output file: .csv, .csv.gz or .parquet")],
    seed: Annotated[int | None, typer.Option(help="Random seed (default: simulate.seed)")] = None,
    assets: Annotated[int | None, typer.Option(help="Number of assets (default: simulate.assets)")] = None,
    days: Annotated[float | None, typer.Option(help="Days of telemetry (default: simulate.days)")] = None,
    scenario: Annotated[
        str, typer.Option(help="normal (labelled faults) | drift (new regime, no faults)")
    ] = "normal",
    defects: Annotated[
        bool, typer.Option("--defects", help="Inject data-quality defects; rows listed in <out>.defects.json")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
) -> None:
    """Simulate a fleet of pumps (the embedded demo data source) and write it to --out."""
    from plantwatch import simulate as sim_core

    if scenario not in sim_core.SCENARIOS:
        raise UsageError(f"--scenario must be one of {', '.join(sim_core.SCENARIOS)} (got {scenario!r})")
    sim_core.output_format(out)  # fail on a bad suffix before spending time on the simulation
    ctx = common.load()
    cfg = ctx.params.simulate
    seed = cfg.seed if seed is None else seed
    frame = sim_core.simulate_fleet(
        cfg, ctx.params.data, scenario=scenario, seed=seed, assets=assets, days=days  # type: ignore[arg-type]
    )
    summary = sim_core.summarize(frame)
    sidecar = None
    if defects:
        frame, rows = sim_core.inject_defects(frame, ctx.params.data, seed=seed, config=cfg.defects)
        sidecar = sim_core.write_defects_sidecar(out, rows, seed=seed, rows=len(frame))
        summary["defects"] = {k: len(v) for k, v in rows.items()}
    path = sim_core.write_frame(frame, out)
    log.debug("wrote %s", path)
    if json_out:
        common.echo_json({"out": str(path), "scenario": scenario, "seed": seed, **summary,
                          "defects_file": None if sidecar is None else str(sidecar)})
    else:
        _print_summary(summary, path, sidecar, scenario)


def _print_summary(summary: dict, path: Path, sidecar: Path | None, scenario: str) -> None:
    """Rows, assets, anomalous share and fault kinds as a short rich report."""
    console = common.console
    console.print(
        f"[bold]{path}[/]: {summary['rows']:,} rows, {summary['assets']} assets, "
        f"{summary['start']} .. {summary['end']}, scenario {scenario}, "
        f"anomalous {summary['anomalous_share']:.2%}",
        highlight=False,
    )
    if summary["fault_kinds"]:
        table = Table("fault kind", "rows", "events")
        for kind, counts in summary["fault_kinds"].items():
            table.add_row(kind, str(counts["rows"]), str(counts["events"]))
        console.print(table)
    if sidecar is not None:
        listed = ", ".join(f"{k} {v}" for k, v in summary["defects"].items())
        console.print(f"defects: {listed} -> {sidecar}", highlight=False)


# --- ingest / validate -----------------------------------------------------------------------------
def _register_data_commands(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
    app.command("validate")(validate)


@friendly
def ingest(
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
) -> None:
    """Read data.sources + the landing folder into data.interim_path (canonical frame)."""
    from plantwatch import ingest as ingest_core

    ctx = common.load()
    _, summary = ingest_core.ingest(ctx.params.data, ctx.paths)
    if as_json:
        common.echo_json(
            {
                "rows": summary.rows,
                "total_rows": summary.total_rows,
                "skipped_replays": summary.skipped_replays,
                "type_errors": summary.type_errors,
                "output": summary.output,
            }
        )
        return
    table = Table("source", "rows")
    for name, rows in summary.rows.items():
        table.add_row(name, f"{rows:,}")
    for name, original in summary.skipped_replays.items():
        table.add_row(f"{name} (replay of {original}: skipped)", "0")
    table.add_row("[bold]total[/]", f"[bold]{summary.total_rows:,}[/]")
    common.console.print(table)
    note = (
        f", {summary.type_errors} row(s) with type errors (validate quarantines them)"
        if summary.type_errors
        else ""
    )
    common.console.print(f"wrote {summary.output}{note}", highlight=False)


@friendly
def validate(
    path: Annotated[
        Path | None, typer.Argument(help="Canonical Parquet batch (default: data.interim_path)")
    ] = None,
    suite_only: Annotated[
        bool, typer.Option("--suite-only", help="Only (re)write expectations/<suite>.json from params")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
) -> None:
    """Validate a batch with the GX suite; quarantine bad rows. Exit 0 accepted, 1 rejected, 2 usage."""
    from plantwatch.validation import records

    ctx = common.load()
    if suite_only:
        plan = records.sync_suite(ctx.params, ctx.paths)
        common.console.print(
            f"suite {plan.name}: {plan.size} expectations, version {plan.version}", highlight=False
        )
        return
    if path is not None:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        if not path.name.lower().endswith((".parquet", ".pq")):
            raise UsageError(f"{path}: validate reads canonical Parquet (run `plantwatch ingest` for CSV)")
        target = path
    else:
        target = ctx.paths.resolve(ctx.params.data.interim_path)
    outcome = records.validate_path(target, ctx.params, ctx.paths)
    if not outcome.accepted:  # one line on stderr, exit 1 (details: the report and the ledger)
        raise DataError(outcome.one_line())
    if as_json:
        common.echo_json(outcome.summary())
    else:
        _print_outcome(outcome)


def _print_outcome(outcome: ValidationOutcome) -> None:
    """Verdict line plus a table of quarantine reasons and warnings."""
    console = common.console
    console.print(outcome.one_line(), highlight=False)
    if outcome.reasons or outcome.warnings:
        table = Table("reason", "rows", "action")
        for reason, rows in sorted(outcome.reasons.items()):
            table.add_row(reason, f"{rows:,}", "quarantined")
        for reason, rows in sorted(outcome.warnings.items()):
            table.add_row(reason, f"{rows:,}", "kept (warning)")
        console.print(table)
