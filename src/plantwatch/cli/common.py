"""Helpers every CLI module shares: params loading, friendly errors, logging set-up."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler

from plantwatch.config import Params, load_params
from plantwatch.errors import PlantwatchError
from plantwatch.paths import ProjectPaths

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True)

_state: dict[str, Any] = {"params_path": None, "verbose": False}


def root_callback(
    params: Annotated[
        Path | None, typer.Option("--params", help="params.yaml to use (default: ./params.yaml)")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging")] = False,
) -> None:
    """Keep an industrial-telemetry anomaly detector healthy."""
    _state["params_path"] = params
    _state["verbose"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )
    for noisy in ("great_expectations", "distributed", "bentoml", "urllib3", "httpx", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@dataclass(frozen=True)
class Context:
    params: Params
    paths: ProjectPaths


def load() -> Context:
    """Params (from ``--params`` or ``<root>/params.yaml``) and the project layout, loaded once."""
    paths = ProjectPaths.at()
    params_path = _state["params_path"] or paths.params
    return Context(params=load_params(params_path), paths=paths)


def friendly(func: F) -> F:
    """Turn ``PlantwatchError`` into one readable stderr line and its exit code (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PlantwatchError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=err.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def echo_json(obj: Any) -> None:
    """Machine-readable output on stdout (no rich markup)."""
    import json

    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
