"""Registry semantics: register, promote, rollback, stages, pointer reads, audit trail."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from plantwatch.errors import RegistryError, UsageError
from plantwatch.registry import Registry
from plantwatch.registry.versions import new_version_id
from tests.unit.test_registry_fixtures import (  # noqa: F401  (registry_fixture provides `registry`)
    dump_model,
    evidence,
    register_candidate,
    registry_fixture,
)

ROLLBACK_BUDGET_S = 5.0


def _pointer(reg: Registry) -> dict:
    return json.loads(reg.pointer_path.read_text())


def test_version_ids_sort_by_time_and_are_unique() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    ids = [new_version_id(now, None) for _ in range(50)]
    assert len(set(ids)) == 50
    assert all(i.startswith("20240501-120000-123456-") for i in ids)
    later = new_version_id(datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC), None)
    assert later > max(ids)
    # A clock that stepped back still yields an id after the latest one.
    assert new_version_id(datetime(2020, 1, 1, tzinfo=UTC), later) > later


def test_register_creates_candidate_in_bentoml_store_with_lineage(registry: Registry, tmp_path: Path) -> None:
    tag = register_candidate(registry, tmp_path, pr_auc=0.61)
    info = registry.version(tag)
    assert info.stage == "candidate" and registry.production_tag() is None
    model = registry._store().get(tag)
    assert sorted(p.name for p in Path(model.path).iterdir()) == [
        "model.skops",
        "model.yaml",
        "model_card.json",
        "model_card.md",
    ]
    meta = model.info.metadata
    assert (
        meta["git_commit"] == "abc1234" and meta["data_hash"] == "md5-0.61" and meta["params_hash"] == "p-1"
    )
    assert meta["metrics"]["pr_auc"] == pytest.approx(0.61)
    assert meta["sha256"]["model.skops"] == info.record.artifact_sha256
    assert [g["name"] for g in meta["gates"]] == ["min_pr_auc", "min_event_recall"]
    assert model.info.labels["kind"] == "custom" and model.info.labels["verdict"] == "candidate"


def test_promote_then_rollback_restores_previous_and_tracks_stages(
    registry: Registry, tmp_path: Path
) -> None:
    a = register_candidate(registry, tmp_path, 0.5, seed=1)
    b = register_candidate(registry, tmp_path, 0.6, seed=2)
    assert a < b  # version ids sort by registration time
    registry.promote(a, actor="alice", reason="first")
    registry.promote(b, actor="bob", reason="better")
    assert registry.production_tag() == b
    assert {v.tag: v.stage for v in registry.versions()} == {a: "archived", b: "production"}

    started = time.monotonic()
    state = registry.rollback(reason="false alarms spiked", actor="carol")
    assert time.monotonic() - started < ROLLBACK_BUDGET_S
    assert state.current == a == registry.production_tag()
    assert {v.tag: v.stage for v in registry.versions()} == {a: "production", b: "archived"}
    doc = _pointer(registry)
    assert doc["current"] == a
    assert [(h["action"], h["tag"], h["from"], h["actor"]) for h in doc["history"]] == [
        ("promote", a, None, "alice"),
        ("promote", b, a, "bob"),
        ("rollback", a, b, "carol"),
    ]
    assert json.loads(registry.backup_path.read_text()) == doc
    tag, model = registry.load_production()
    assert tag == a and model.threshold_ == pytest.approx(0.6)


def test_rollback_never_returns_automatically_to_a_version_rolled_back_from(
    registry: Registry, tmp_path: Path
) -> None:
    a, b, c = (register_candidate(registry, tmp_path, 0.5 + i / 10, seed=i) for i in range(3))
    for tag in (a, b):
        registry.promote(tag, reason="r")
    registry.rollback(reason="b is bad")  # -> a, b marked bad
    with pytest.raises(RegistryError, match="no earlier production version"):
        registry.rollback(reason="again")
    registry.promote(c, reason="r")
    assert registry.rollback(reason="c is bad").current == a  # skips b
    assert registry.rollback(to=b, reason="b was fine after all").current == b  # explicit is allowed


def _snapshot(reg: Registry) -> tuple[bytes, bytes]:
    return reg.pointer_path.read_bytes(), reg.backup_path.read_bytes()


def test_rollback_errors_leave_pointer_unchanged(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="nothing is in production"):
        registry.rollback(reason="x")
    a = register_candidate(registry, tmp_path, 0.5, seed=1)
    registry.promote(a, reason="first")
    before = _snapshot(registry)
    with pytest.raises(RegistryError, match="no earlier production version"):
        registry.rollback(reason="no history")
    rejected = registry.register(
        dump_model(tmp_path / "r.skops", 9), evidence(0.1), rejected_reasons=["min_pr_auc"]
    )
    with pytest.raises(RegistryError, match="rejected"):
        registry.rollback(to=rejected.tag, reason="try rejected")
    with pytest.raises(RegistryError, match="not registered"):
        registry.rollback(to="plantwatch-detector:20990101-000000-000000-abcdef", reason="missing")
    with pytest.raises(UsageError, match="not a version"):
        registry.rollback(to="other-model:20990101-000000-000000-abcdef", reason="wrong name")
    with pytest.raises(UsageError, match="reason"):
        registry.rollback(reason="  ")
    candidate = register_candidate(registry, tmp_path, 0.7, seed=3)
    with pytest.raises(RegistryError, match="never been in production"):
        registry.rollback(to=candidate, reason="not a rollback")
    with pytest.raises(RegistryError, match="already in production"):
        registry.promote(a, reason="again")
    assert _snapshot(registry) == before
    assert registry.production_tag() == a


def test_rejected_version_is_recorded_but_never_promotable(registry: Registry, tmp_path: Path) -> None:
    info = registry.register(
        dump_model(tmp_path / "r.skops", 4),
        evidence(0.2, passed=False),
        rejected_reasons=["gate min_pr_auc failed"],
    )
    assert info.stage == "rejected" and registry.version(info.tag).record.reasons == (
        "gate min_pr_auc failed",
    )
    with pytest.raises(RegistryError, match="rejected by the gates"):
        registry.promote(info.tag, reason="force")
    assert not registry.pointer_path.exists() and registry.production_tag() is None


def test_load_production_without_promotion_is_a_clear_error(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="no version is in production"):
        registry.load_production()


def test_production_tag_rereads_only_when_pointer_changes(registry: Registry, tmp_path: Path) -> None:
    a = register_candidate(registry, tmp_path, 0.5, seed=1)
    b = register_candidate(registry, tmp_path, 0.6, seed=2)
    registry.promote(a, reason="r")
    reader = Registry(registry.root, registry.cfg)  # e.g. the service, in another process
    assert reader.production_tag() == a
    stamp = reader.pointer_stamp()
    assert reader.pointer_stamp() == stamp and reader.production_tag() == a
    registry.promote(b, reason="r")
    assert reader.pointer_stamp() != stamp
    assert reader.production_tag() == b


def test_reading_the_pointer_imports_no_heavy_library(registry: Registry, tmp_path: Path) -> None:
    """The service polls production_tag(): it must not drag in bentoml/skops/sklearn/pandas."""
    registry.promote(register_candidate(registry, tmp_path), reason="r")
    code = (
        "import sys; from pathlib import Path; from plantwatch.config import RegistryConfig;"
        "from plantwatch.registry import Registry;"
        f"print(Registry(Path({str(registry.root)!r}), RegistryConfig()).production_tag());"
        "print(sorted(m for m in ('bentoml', 'skops', 'sklearn', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [registry.production_tag(), "[]"]


def test_audit_log_records_every_action_with_actor(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLANTWATCH_ACTOR", "ci-bot")
    a = register_candidate(registry, tmp_path, 0.5, seed=1)
    b = register_candidate(registry, tmp_path, 0.6, seed=2)
    registry.promote(a, reason="first")
    registry.promote(b, reason="second")
    registry.rollback(reason="bad b")
    registry.register(dump_model(tmp_path / "r.skops", 5), evidence(0.1), rejected_reasons=["too weak"])
    registry.audit("retrain_trigger", reason="drift in 2 of 3 batches", data_hash="md5-new", batch="b-7")
    events = registry.audit_events()
    assert [e["event"] for e in events] == [
        "register",
        "register",
        "promote",
        "promote",
        "rollback",
        "reject",
        "retrain_trigger",
    ]
    assert {e["actor"] for e in events} == {"ci-bot"}
    assert (events[3]["from"], events[3]["to"]) == (a, b)
    assert (events[4]["from"], events[4]["to"], events[4]["reason"]) == (b, a, "bad b")
    assert events[2]["gate_report"] == "reports/gates.md" and events[2]["data_hash"] == "md5-0.5"
    assert events[5]["reason"] == "too weak"
    assert events[6]["batch"] == "b-7" and events[6]["data_hash"] == "md5-new"
    lines = registry.audit_log.path.read_text().splitlines()
    assert len(lines) == len(events) and all(json.loads(line)["at"] for line in lines)
    assert registry.audit_events(limit=2) == events[-2:]


def test_audit_rejects_bad_event_names_and_skips_torn_lines(registry: Registry) -> None:
    with pytest.raises(UsageError):
        registry.audit("Retrain Trigger!")
    registry.audit("retrain_trigger", reason="drift")
    with registry.audit_log.path.open("a") as fh:
        fh.write('{"at": "2024-01-01T00:00:00Z", "event": "prom')  # a writer killed mid-line
    assert [e["event"] for e in registry.audit_events()] == ["retrain_trigger"]


def test_actor_falls_back_to_os_user(monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass

    from plantwatch.registry import current_actor

    monkeypatch.delenv("PLANTWATCH_ACTOR", raising=False)
    assert current_actor() == getpass.getuser()
    assert current_actor("explicit") == "explicit"
    monkeypatch.setenv("PLANTWATCH_ACTOR", "ops")
    assert current_actor() == "ops"


def test_crashed_registration_debris_is_removed_by_next_registration(
    registry: Registry, tmp_path: Path
) -> None:
    a = register_candidate(registry, tmp_path, 0.5, seed=1)
    model_dir = registry.model_dir(a)
    orphan = model_dir.parent / "20000101-000000-000000-abcdef"  # store folder without a record
    orphan.mkdir()
    (orphan / "model.skops").write_bytes(b"half")
    foreign = model_dir.parent / "hand-made"  # not a plantwatch version id: left alone
    foreign.mkdir()
    assert [v.tag for v in registry.versions()] == [a]
    register_candidate(registry, tmp_path, 0.6, seed=2)
    assert not orphan.exists() and foreign.exists() and model_dir.exists()
