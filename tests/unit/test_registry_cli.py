"""CLI over the registry: promote (gate outputs in), models, show, rollback, audit; one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from plantwatch.cli import app
from tests.unit.test_registry_fixtures import open_registry, write_gate_outputs

runner = CliRunner()


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_promote_registers_and_promotes_the_gate_choice(project: Path) -> None:
    write_gate_outputs(project, passed=True, chosen="custom", pr_auc=0.57)
    code, out, err = _run("promote")
    assert code == 0, err
    reg = open_registry(project)
    tag = reg.production_tag()
    assert tag is not None and tag in out
    rec = reg.record(tag)
    assert rec.kind == "custom" and rec.metrics["pr_auc"] == 0.57
    assert rec.lineage["gate_report"] == "reports/gates.md"
    assert len(rec.lineage["gate_report_sha256"]) == 64
    assert reg.card(tag)["operating_point"]["alert_budget"] == 1.0  # params train.alert_budget

    code, out, _ = _run("models", "--json")
    rows = json.loads(out)
    assert code == 0 and [(r["tag"], r["stage"], r["kind"]) for r in rows] == [(tag, "production", "custom")]
    assert rows[0]["metrics"]["pr_auc"] == 0.57 and rows[0]["created"]

    code, out, _ = _run("models", "show", tag.split(":")[1], "--json")
    shown = json.loads(out)
    assert code == 0 and shown["card"]["model"]["tag"] == tag and shown["record"]["files"]["model.skops"]
    code, out, _ = _run("models")
    assert code == 0 and "production" in out
    code, out, _ = _run("models", "show", tag)
    assert code == 0 and "min_pr_auc" in out


def test_failed_gates_register_rejected_exit_1_and_keep_production(project: Path) -> None:
    write_gate_outputs(project, passed=True, pr_auc=0.6)
    assert _run("promote")[0] == 0
    reg = open_registry(project)
    good = reg.production_tag()
    write_gate_outputs(project, passed=False, pr_auc=0.21, seed=5)
    code, _, err = _run("promote")
    line = _one_error_line(err)
    assert code == 1 and "registered as rejected" in line and "min_pr_auc" in line
    assert reg.production_tag() == good
    stages = {r["stage"] for r in json.loads(_run("models", "--json")[1])}
    assert stages == {"production", "rejected"}
    assert [e["event"] for e in reg.audit_events()] == ["register", "promote", "reject"]


def test_gate_file_claiming_pass_with_a_failed_gate_is_rejected(project: Path) -> None:
    write_gate_outputs(project, passed=True, pr_auc=0.1)  # gates.json: passed=true, min_pr_auc passed=false
    code, _, err = _run("promote")
    assert code == 1 and "registered as rejected" in _one_error_line(err)
    assert open_registry(project).production_tag() is None


def test_promote_without_gate_outputs_is_one_line_error(project: Path) -> None:
    code, _, err = _run("promote")
    assert code == 1 and "metrics/gates.json not found" in _one_error_line(err)
    write_gate_outputs(project)
    (project / "models" / "custom.skops").unlink()
    code, _, err = _run("promote")
    assert code == 1 and "models/custom.skops not found" in _one_error_line(err)
    (project / "metrics" / "gates.json").write_text('{"chosen": "../../etc", "passed": true}')
    code, _, err = _run("promote")
    assert code == 1 and "'chosen' must name a candidate" in _one_error_line(err)


def test_rollback_and_audit_commands(project: Path, monkeypatch) -> None:
    monkeypatch.setenv("PLANTWATCH_ACTOR", "operator-7")
    code, _, err = _run("rollback", "--reason", "nothing yet")
    assert code == 1 and "nothing is in production" in _one_error_line(err)
    write_gate_outputs(project, pr_auc=0.5, seed=1)
    _run("promote")
    reg = open_registry(project)
    first = reg.production_tag()
    write_gate_outputs(project, pr_auc=0.6, seed=2)
    _run("promote")
    second = reg.production_tag()
    assert first != second

    code, _, err = _run("rollback", "--to", "20990101-000000-000000-abcdef", "--reason", "typo")
    assert code == 1 and "not registered" in _one_error_line(err)
    code, _, err = _run("rollback", "--to", "garbage", "--reason", "typo")
    assert code == 2 and "not a version" in _one_error_line(err)
    assert reg.production_tag() == second

    code, out, _ = _run("rollback", "--reason", "alarm storm on asset-3")
    assert code == 0 and reg.production_tag() == first
    code, out, _ = _run("audit", "--json")
    events = json.loads(out)
    assert [e["event"] for e in events] == ["register", "promote", "register", "promote", "rollback"]
    assert events[-1]["reason"] == "alarm storm on asset-3" and events[-1]["actor"] == "operator-7"
    code, out, _ = _run("audit", "--limit", "1")
    assert code == 0 and "rollback" in out and "register" not in out

    candidate = reg.register(project / "models" / "baseline.skops", reg_evidence(project)).tag
    code, out, _ = _run("promote", "--tag", candidate, "--reason", "manual pick")
    assert code == 0 and reg.production_tag() == candidate
    assert reg.history()[-1]["reason"] == "manual pick"


def reg_evidence(project: Path):
    from plantwatch.config import load_params
    from plantwatch.paths import ProjectPaths
    from plantwatch.registry.promotion import read_evidence

    return read_evidence(ProjectPaths.at(project), load_params(project / "params.yaml"))[1]
