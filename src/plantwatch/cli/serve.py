"""``plantwatch score`` (offline batch scoring) and ``plantwatch serve`` (the HTTP service).

``score`` goes through exactly the code the service runs per request (``plantwatch.scoring``):
same checks, same model (the production version, hash-verified), same inference log and review
queue. ``serve`` is a convenience: it execs ``bentoml serve services.service:Detector`` bound to
127.0.0.1 (``serve.host``) with the project's ``PLANTWATCH_ROOT`` and ``BENTOML_HOME``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from plantwatch import scoring, serving
from plantwatch.cli import common
from plantwatch.errors import UsageError

logger = logging.getLogger(__name__)

SERVICE_TARGET = "services.service:Detector"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(app: typer.Typer) -> None:
    """Add ``score`` and ``serve`` to the root app."""
    app.command("score")(score)
    app.command("serve")(serve)


@common.friendly
def score(
    input: Annotated[Path, typer.Option("--input", "-i", help="CSV or Parquet: timestamp, asset, sensors")],
    out: Annotated[Path, typer.Option("--out", "-o", help="results file (.csv, .csv.gz or .parquet)")],
    no_log: Annotated[bool, typer.Option("--no-log", help="do not append to the inference log")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Score a file with the production model (same code path as POST /score)."""
    from plantwatch.registry import Registry
    from plantwatch.review import ReviewQueue

    ctx = common.load()
    params, paths = ctx.params, ctx.paths
    tag, bundle = Registry(paths.root, params.registry).load_production()
    serving.check_compatible(params.data.sensor_names)(bundle)
    summary = scoring.score_file(
        input,
        out,
        bundle=bundle,
        model_version=tag,
        default_asset=params.data.default_asset,
        project_root=paths.root,
        log_root=None if no_log else paths.inference_log,
        queue=ReviewQueue.for_project(paths, params.review),
        review_decisions=params.review.enqueue_decisions,
        request_id=serving.new_request_id(),
    )
    if as_json:
        common.echo_json(summary.to_dict())
        return
    table = Table(title=f"scored {summary.rows} reading(s) with {summary.model_version}")
    table.add_column("decision")
    table.add_column("readings", justify="right")
    for decision, n in summary.decisions.items():
        table.add_row(decision, str(n))
    common.console.print(table)
    common.console.print(f"results: {summary.out}; review items offered: {summary.review_items}")
    for f in summary.log_files:
        common.console.print(f"inference log: {f}")


def _service_dir(root: Path) -> Path:
    """Folder holding ``services/service.py``: the project itself, else the plantwatch checkout."""
    import plantwatch

    for candidate in (root, Path(plantwatch.__file__).resolve().parents[2]):
        if (candidate / "services" / "service.py").is_file():
            return candidate
    raise UsageError("services/service.py not found in the project or the plantwatch checkout")


def serve_command(root: Path, host: str, port: int) -> list[str]:
    """The ``bentoml serve`` argv (pure, so it is testable without starting anything)."""
    bentoml = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or shutil.which("bentoml")
    if bentoml is None:
        raise UsageError("bentoml is not installed in this environment")
    return [
        bentoml, "serve", SERVICE_TARGET,
        "--host", host, "--port", str(port),
        "--working-dir", str(_service_dir(root)),
    ]  # fmt: skip


@common.friendly
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default serve.host, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default serve.port)")] = None,
) -> None:
    """Start the scoring service (exec's `bentoml serve`); stop it with Ctrl-C or SIGTERM."""
    ctx = common.load()
    cfg = ctx.params.serve
    host = host or cfg.host
    if host not in _LOOPBACK:
        logger.warning("binding %s: the service will be reachable from other machines", host)
    argv = serve_command(ctx.paths.root, host, port or cfg.port)
    env = dict(os.environ)
    env["PLANTWATCH_ROOT"] = str(ctx.paths.root)
    env.setdefault("BENTOML_HOME", str(ctx.paths.bentoml_home))
    env["BENTOML_DO_NOT_TRACK"] = "true"
    os.execve(argv[0], argv, env)
