"""Integrity: hash pinning, trusted-types loading, damaged pointer recovery."""

from __future__ import annotations

import fractions
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import skops.io as sio

from plantwatch.errors import RegistryError
from plantwatch.registry import Registry
from plantwatch.registry.integrity import load_skops
from tests.unit.test_registry_fixtures import (  # noqa: F401  (registry_fixture provides `registry`)
    dump_model,
    evidence,
    make_model,
    register_candidate,
    registry_fixture,
)


@pytest.fixture()
def two_promoted(registry: Registry, tmp_path: Path) -> tuple[str, str]:
    """a then b promoted; b is production, a archived."""
    a = register_candidate(registry, tmp_path, 0.5, seed=1)
    b = register_candidate(registry, tmp_path, 0.6, seed=2)
    registry.promote(a, reason="first")
    registry.promote(b, reason="second")
    return a, b


def _files(reg: Registry) -> tuple[bytes, bytes]:
    return reg.pointer_path.read_bytes(), reg.backup_path.read_bytes()


def test_tampered_artifact_is_refused_and_pointer_stays(
    registry: Registry, two_promoted: tuple[str, str]
) -> None:
    a, b = two_promoted
    before = _files(registry)
    artifact = registry.model_dir(a) / "model.skops"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="integrity check failed"):
        registry.load(a)
    with pytest.raises(RegistryError, match="integrity check failed"):
        registry.rollback(reason="go back to a")
    assert _files(registry) == before and registry.production_tag() == b
    tag, _ = registry.load_production()  # the intact production version still loads
    assert tag == b


def test_swapped_artifact_with_edited_bentoml_metadata_is_still_refused(
    registry: Registry, two_promoted: tuple[str, str], tmp_path: Path
) -> None:
    """An attacker who can write the model folder rewrites model.yaml's hash too: the index catches it."""
    a, b = two_promoted
    folder = registry.model_dir(b)
    old = registry.record(b).artifact_sha256
    evil = dump_model(tmp_path / "evil.skops", seed=77, threshold=99.0)
    new = hashlib.sha256(evil.read_bytes()).hexdigest()
    shutil.copyfile(evil, folder / "model.skops")
    yaml_path = folder / "model.yaml"
    yaml_path.write_text(yaml_path.read_text().replace(old, new))
    with pytest.raises(RegistryError, match="disagree with the registry index"):
        registry.load_production()
    assert registry.production_tag() == b  # nothing moved; the service keeps its loaded model


def test_deleted_model_folder_is_a_clear_error(registry: Registry, two_promoted: tuple[str, str]) -> None:
    a, _ = two_promoted
    shutil.rmtree(registry.model_dir(a))
    with pytest.raises(RegistryError, match="not in the BentoML store"):
        registry.rollback(reason="a please")


def test_untrusted_types_are_refused_at_registration_and_load(registry: Registry, tmp_path: Path) -> None:
    model = make_model(3)
    model.extra_ = fractions.Fraction(1, 3)  # a type outside plantwatch/sklearn/numpy/scipy/builtins
    path = tmp_path / "untrusted.skops"
    sio.dump(model, path)
    with pytest.raises(RegistryError, match=r"untrusted types fractions\.Fraction"):
        registry.register(path, evidence(0.5))
    assert registry.versions() == []
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(RegistryError, match="untrusted types"):
        load_skops(path, sha, "test")  # even with a matching hash nothing foreign is built


def test_corrupt_artifact_is_not_registered(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "broken.skops"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(RegistryError, match="not a readable skops file"):
        registry.register(path, evidence(0.5))
    with pytest.raises(RegistryError, match="model file not found"):
        registry.register(tmp_path / "missing.skops", evidence(0.5))


def test_truncated_pointer_recovers_from_backup_and_next_write_repairs_it(
    registry: Registry, two_promoted: tuple[str, str], tmp_path: Path
) -> None:
    a, b = two_promoted
    text = registry.pointer_path.read_text()
    registry.pointer_path.write_text(text[: len(text) // 2])  # truncated JSON
    reader = Registry(registry.root, registry.cfg)
    assert reader.production_tag() == b
    assert reader.load_production()[0] == b
    c = register_candidate(registry, tmp_path, 0.7, seed=3)
    registry.promote(c, reason="third")
    doc = json.loads(registry.pointer_path.read_text())
    assert doc["current"] == c and [h["tag"] for h in doc["history"]] == [a, b, c]
    events = [e["event"] for e in registry.audit_events()]
    assert events[-2:] == ["pointer_recovered", "promote"]


def test_pointer_and_backup_both_damaged_are_rebuilt_from_audit_log(
    registry: Registry, two_promoted: tuple[str, str]
) -> None:
    a, b = two_promoted
    registry.rollback(reason="b misbehaves")
    want = [(h["action"], h["tag"], h["from"]) for h in registry.history()]
    registry.pointer_path.write_text("{")
    registry.backup_path.write_bytes(b"\x00\x00")
    reader = Registry(registry.root, registry.cfg)
    assert reader.production_tag() == a
    assert [(h["action"], h["tag"], h["from"]) for h in reader.history()] == want


def test_unrecoverable_pointer_is_a_clear_error_and_nothing_is_overwritten(
    registry: Registry, two_promoted: tuple[str, str], tmp_path: Path
) -> None:
    registry.pointer_path.write_text('{"schema_version": 1, "current": "x", "hist')
    registry.backup_path.unlink()
    registry.audit_log.path.unlink()
    reader = Registry(registry.root, registry.cfg)
    with pytest.raises(RegistryError, match="corrupt and cannot be recovered"):
        reader.production_tag()
    c = register_candidate(registry, tmp_path, 0.7, seed=3)
    with pytest.raises(RegistryError, match="corrupt and cannot be recovered"):
        registry.promote(c, reason="would overwrite evidence")
    assert registry.pointer_path.read_text().endswith('"hist')


def test_pointer_naming_a_different_current_than_its_history_is_treated_as_damaged(
    registry: Registry, two_promoted: tuple[str, str]
) -> None:
    a, b = two_promoted
    doc = json.loads(registry.pointer_path.read_text())
    doc["current"] = a  # hand edit that contradicts the history
    registry.pointer_path.write_text(json.dumps(doc))
    assert Registry(registry.root, registry.cfg).production_tag() == b  # the backup wins
