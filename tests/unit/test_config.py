"""The params loader: good params load, every malformed input is one readable ConfigError (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from plantwatch.config import load_params, parse_params
from plantwatch.errors import ConfigError


def _raw(repo_root: Path) -> dict:
    return yaml.safe_load((repo_root / "params.yaml").read_text())


def test_repo_params_load(repo_root: Path) -> None:
    p = load_params(repo_root / "params.yaml")
    assert p.data.sensor_names == ["temperature", "vibration", "pressure", "flow", "current", "rpm"]
    assert p.validate_.suite_name == "raw_telemetry"
    assert p.serve.host == "127.0.0.1"


def test_unknown_key_is_named(repo_root: Path) -> None:
    raw = _raw(repo_root)
    raw["train"]["alert_budgte"] = 2
    with pytest.raises(ConfigError, match=r"train\.alert_budgte: unknown key"):
        parse_params(raw)


def test_bad_value_is_named(repo_root: Path) -> None:
    raw = _raw(repo_root)
    raw["data"]["sensors"]["vibration"] = {"min": 5, "max": 1}
    with pytest.raises(ConfigError, match=r"data\.sensors\.vibration"):
        parse_params(raw)


def test_missing_data_block() -> None:
    with pytest.raises(ConfigError, match="data"):
        parse_params({"train": {}})


def test_sensor_list_shorthand(repo_root: Path) -> None:
    raw = _raw(repo_root)
    raw["data"]["sensors"] = ["a", "b"]
    assert parse_params(raw).data.sensor_names == ["a", "b"]


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_cli_config_error_is_one_line_exit_2(project: Path) -> None:
    from plantwatch.cli import app

    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["gates"]["min_pr_auc"] = 7
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["ingest"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "gates.min_pr_auc" in lines[0]
    assert "Traceback" not in result.output
