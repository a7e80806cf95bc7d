"""CLI of the model stages: ``features``, ``train``, ``evaluate``, ``gate`` (thin shells).

Each command loads params once, calls the stage's I/O shell in ``plantwatch.training`` /
``plantwatch.gating`` (the same functions DVC's stages and the flows run) and reports. A failed gate
is a ``GateFailed`` error: one line naming the gate, exit code 1.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from plantwatch.cli import common
from plantwatch.cli.common import friendly

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON")]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("features")(features)
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.command("gate")(gate)


@friendly
def features(as_json: JsonFlag = False) -> None:
    """Split data/processed/clean.parquet by time into train / validation / holdout (+ split.json)."""
    from plantwatch.training import features_stage

    ctx = common.load()
    info = features_stage(ctx.paths, ctx.params)
    if as_json:
        common.echo_json(info)
        return
    rows = info["rows"]
    common.console.print(
        f"split: train {rows['train']:,} / validation {rows['validation']:,} / "
        f"holdout {rows['holdout']:,} rows; "
        f"holdout from {info['holdout_start']} (sha256 {info['holdout_sha256'][:12]}…); "
        f"reviewed labels used: {info['review_labels_used']}",
        highlight=False,
    )


@friendly
def train(as_json: JsonFlag = False) -> None:
    """Cross-validate and fit every candidate; write models/<candidate>.skops and models/train_info.json."""
    from plantwatch.gating import fmt_value
    from plantwatch.training import train_stage

    ctx = common.load()
    info = train_stage(ctx.paths, ctx.params)
    if as_json:
        common.echo_json(info)
        return
    table = Table("candidate", "detector", "features", "hyperparameters", "threshold", "review from")
    for kind, c in info["candidates"].items():
        hyper = str(c["hyperparameters"] or "defaults")
        table.add_row(kind, str(c["detector"]), str(len(c["features"])), hyper,
                      fmt_value(c["threshold"]), fmt_value(c["review_low"]))
    common.console.print(table)
    common.console.print(f"{len(info['cv']['folds'])} CV folds; git {info['git_commit'][:12]}, "
                         f"data md5 {info['data_hash']}", highlight=False)


@friendly
def evaluate(as_json: JsonFlag = False) -> None:
    """Holdout and CV metrics of every candidate; DVC plots and PNG figures."""
    from plantwatch.evaluation import METRIC_KEYS
    from plantwatch.gating import evaluate_stage, fmt_summary, fmt_value

    ctx = common.load()
    result = evaluate_stage(ctx.paths, ctx.params)
    if as_json:
        from plantwatch.registry.atomic import json_safe

        common.echo_json(json_safe({"holdout": result.holdout, "cv": result.cv}))  # NaN -> null
        return
    names = list(result.holdout)
    table = Table("metric", *(f"{n} holdout" for n in names), *(f"{n} CV mean ± std [CI]" for n in names))
    for k in METRIC_KEYS:
        table.add_row(k, *(fmt_value(result.holdout[n][k]) for n in names),
                      *(fmt_summary(result.cv[n][k]) for n in names))
    common.console.print(table)


@friendly
def gate(as_json: JsonFlag = False) -> None:
    """Apply the quality gates; write metrics/gates.json and reports/gates.md; exit 1 if a gate fails."""
    from plantwatch.gating import gate_stage

    ctx = common.load()
    decision = gate_stage(ctx.paths, ctx.params)
    if as_json:
        common.echo_json(decision)
        return
    common.console.print(f"gates passed; chosen candidate: [bold]{decision['chosen']}[/]")
    for note in decision["notes"]:
        common.console.print(f"- {note}", highlight=False)
