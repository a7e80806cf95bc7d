"""The ``plantwatch`` command line: one Typer app, commands grouped per stage in sibling modules.

Each sibling module exposes ``register(app)``; commands are thin shells that load params once
(``common.load``), call the stage's core function and report. Errors derived from
``PlantwatchError`` become one readable line on stderr and the error's exit code.
"""

from __future__ import annotations

import typer

from plantwatch.cli import common, data, model, monitor, registry, review, serve

app = typer.Typer(
    name="plantwatch",
    help="Keep an industrial-telemetry anomaly detector healthy: validate, train, gate, serve, monitor.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.callback()(common.root_callback)

for _module in (data, model, registry, serve, monitor, review):
    _module.register(app)


def main() -> None:  # pragma: no cover - console-script shim
    app()
