"""Typed configuration: ``params.yaml`` loaded once into pydantic models, grouped per stage.

Each stage's block has its own module here (``data``, ``validate``, ``train`` …) and the stage's
core function receives only its own block as an argument; no core code reads params or files.
Unknown keys are errors (``extra="forbid"``) so that a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from plantwatch.config.base import StrictModel
from plantwatch.config.data import DataConfig, SensorSpec
from plantwatch.config.monitor import MonitorConfig
from plantwatch.config.orchestrate import OrchestrateConfig
from plantwatch.config.registry import RegistryConfig
from plantwatch.config.review import ReviewConfig
from plantwatch.config.rules import MaintenanceWindow, RulesConfig
from plantwatch.config.serve import ServeConfig
from plantwatch.config.simulate import SimulateConfig
from plantwatch.config.train import FeaturesConfig, GatesConfig, ScaleConfig, SplitConfig, TrainConfig
from plantwatch.config.validate import ValidateConfig
from plantwatch.errors import ConfigError

__all__ = [
    "DataConfig",
    "FeaturesConfig",
    "GatesConfig",
    "MaintenanceWindow",
    "MonitorConfig",
    "OrchestrateConfig",
    "Params",
    "RegistryConfig",
    "ReviewConfig",
    "RulesConfig",
    "ScaleConfig",
    "SensorSpec",
    "ServeConfig",
    "SimulateConfig",
    "SplitConfig",
    "TrainConfig",
    "ValidateConfig",
    "load_params",
    "parse_params",
]


class Params(StrictModel):
    """The whole of params.yaml. Every block has defaults except ``data`` (the data contract)."""

    data: DataConfig
    simulate: SimulateConfig = SimulateConfig()
    validate_: ValidateConfig = ValidateConfig()
    split: SplitConfig = SplitConfig()
    features: FeaturesConfig = FeaturesConfig()
    train: TrainConfig = TrainConfig()
    gates: GatesConfig = GatesConfig()
    scale: ScaleConfig = ScaleConfig()
    registry: RegistryConfig = RegistryConfig()
    serve: ServeConfig = ServeConfig()
    monitor: MonitorConfig = MonitorConfig()
    review: ReviewConfig = ReviewConfig()
    orchestrate: OrchestrateConfig = OrchestrateConfig()
    rules: RulesConfig = RulesConfig()

    model_config = StrictModel.model_config | {"populate_by_name": True}

    def __init__(self, **data: Any) -> None:
        # ``validate`` shadows a BaseModel attribute, so the block is stored as ``validate_``.
        if "validate" in data:
            data["validate_"] = data.pop("validate")
        super().__init__(**data)


def _format_error(err: ValidationError, source: str) -> str:
    """One readable line: the first offending key path and what is wrong with it."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]).replace("validate_", "validate") or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def parse_params(raw: dict[str, Any], source: str = "params") -> Params:
    """Validate an already-parsed mapping; raise ``ConfigError`` with one readable line."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of stage blocks at the top level")
    try:
        return Params(**raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None
    except TypeError as err:  # e.g. a block given as a list
        raise ConfigError(f"{source}: {err}") from None


def load_params(path: Path | str) -> Params:
    """Read and validate a params.yaml; every failure is a ``ConfigError`` (exit code 2)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML") from None
    return parse_params(raw, str(path.name))
