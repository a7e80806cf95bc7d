"""``Registry``: versions in the BentoML store, stages and the production pointer kept by plantwatch.

Who owns what:

* BentoML store (``$BENTOML_HOME/models/<model_name>/<version>/``): the bytes of each version — the
  skops bundle, ``model_card.md`` and ``model_card.json`` — plus immutable labels and metadata.
* ``registry/versions/<version>.json``: plantwatch's record of each version, including the sha256
  of every stored file. This is the integrity reference (BentoML's metadata sits in the same folder
  as the artifact, so whoever can swap the file can also edit that copy of the hash).
* ``registry/production.json`` (+ ``.bak``): the production pointer and its history.
* ``registry/audit.jsonl``: the append-only trail of every decision.

Stages are derived, never stored twice: ``rejected`` (record verdict), ``production`` (the pointer),
``archived`` (was production once), ``candidate`` (passed the gates, never production). Nothing uses
BentoML's ``latest``. Writers serialise on file locks; the pointer is replaced atomically, so a
reader (the scoring service, polling it) sees either the old or the new version, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from plantwatch.config.registry import RegistryConfig
from plantwatch.errors import RegistryError, UsageError
from plantwatch.paths import ProjectPaths
from plantwatch.registry.atomic import dumps, fsync_dir, json_safe, remove_stale_temps
from plantwatch.registry.audit import AuditLog, current_actor, utc_now
from plantwatch.registry.card import build_model_card, render_model_card_md
from plantwatch.registry.faults import checkpoint
from plantwatch.registry.integrity import load_skops, sha256_file, verify_files
from plantwatch.registry.pointer import PointerState, read_pointer, write_pointer
from plantwatch.registry.versions import RecordStore, VersionRecord, is_version_id, new_version_id

log = logging.getLogger(__name__)

ARTIFACT_NAME = "model.skops"
CARD_MD_NAME = "model_card.md"
CARD_JSON_NAME = "model_card.json"
STAGES: tuple[str, ...] = ("candidate", "production", "archived", "rejected")


@dataclass(frozen=True)
class Evidence:
    """What the train/evaluate/gate stages produced for one candidate (the promote stage's inputs)."""

    kind: str
    train_info: Mapping[str, Any]
    holdout: Mapping[str, Any]
    cv: Mapping[str, Any]
    gates: Mapping[str, Any]
    alert_budget: float | None = None
    data_sources: Sequence[str] = ()
    gate_report: str | None = None
    gate_report_sha256: str | None = None


@dataclass(frozen=True)
class VersionInfo:
    """A registered version and its current stage."""

    record: VersionRecord
    stage: str

    @property
    def tag(self) -> str:
        return self.record.tag

    def summary(self, key_metrics: Sequence[str] | None = None) -> dict[str, Any]:
        """The JSON row ``plantwatch models --json`` prints."""
        metrics = self.record.metrics
        if key_metrics is not None:
            metrics = {m: metrics.get(m) for m in key_metrics}
        return {
            "tag": self.record.tag,
            "version": self.record.version,
            "stage": self.stage,
            "created": self.record.created,
            "kind": self.record.kind,
            "gates_passed": self.record.gates_passed,
            "metrics": metrics,
        }


def _stored_bytes(folder: Path, files: Mapping[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).write_bytes(data)


def _fsync_tree(folder: Path) -> None:
    """Flush a finished model folder to disk (BentoML copies it into the store without fsync)."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            fsync_dir(path)
    fsync_dir(folder)
    fsync_dir(folder.parent)


def _bento_metadata(value: Any) -> Any:
    """BentoML metadata allows no None: drop None values from mappings, blank them in lists."""
    if isinstance(value, dict):
        return {k: _bento_metadata(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return ["" if v is None else _bento_metadata(v) for v in value]
    return value


def _float_attr(obj: Any, name: str) -> float | None:
    value = getattr(obj, name, None)
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


@dataclass
class Registry:
    """The model registry of one project. Cheap to construct; bentoml is imported only when needed."""

    root: Path
    cfg: RegistryConfig
    bentoml_home: Path | None = None
    _cache: tuple[Any, PointerState] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        paths = ProjectPaths.at(self.root)
        self.root = paths.root
        if self.bentoml_home is None:
            self.bentoml_home = paths.bentoml_home
        # Anything importing bentoml after us (the service) finds the same store.
        os.environ.setdefault("BENTOML_HOME", str(self.bentoml_home))
        self.folder = paths.registry
        self.pointer_path = self.folder / "production.json"
        self.backup_path = self.folder / "production.json.bak"
        self.audit_log = AuditLog(self.folder / "audit.jsonl")
        self.records = RecordStore(self.folder / "versions")
        self._pointer_lock = FileLock(self.folder / ".pointer.lock", timeout=self.cfg.lock_timeout_s)
        self._register_lock = FileLock(self.folder / ".register.lock", timeout=self.cfg.lock_timeout_s)

    # ----------------------------------------------------------------- tags and the BentoML store
    def tag_of(self, tag_or_version: str) -> str:
        """Full tag ``<model_name>:<version>`` from either form; ``UsageError`` if malformed."""
        name, sep, version = tag_or_version.strip().rpartition(":")
        if not sep:
            name = self.cfg.model_name
        if name != self.cfg.model_name or not is_version_id(version):
            raise UsageError(
                f"{tag_or_version!r} is not a version of {self.cfg.model_name} "
                f"(expected {self.cfg.model_name}:YYYYMMDD-HHMMSS-ffffff-xxxxxx)"
            )
        return f"{name}:{version}"

    def _store(self) -> Any:
        # An explicit store, not BentoML's process-wide default: that one freezes BENTOML_HOME at
        # first use, and one process (tests, flows) may open several projects.
        from bentoml._internal.models import ModelStore

        assert self.bentoml_home is not None
        return ModelStore(str(self.bentoml_home / "models"))

    def _bento_model(self, record: VersionRecord) -> Any:
        """The BentoML model of a record; ``RegistryError`` if it is gone or its metadata disagrees."""
        from bentoml.exceptions import BentoMLException

        try:
            model = self._store().get(record.tag)
        except BentoMLException as err:
            raise RegistryError(
                f"{record.tag}: not in the BentoML store at {self.bentoml_home} ({err})"
            ) from None
        if str(model.tag) != record.tag:  # BentoML resolves version prefixes; we want exact tags
            raise RegistryError(f"{record.tag}: not in the BentoML store at {self.bentoml_home}")
        stored = model.info.metadata.get("sha256")
        if stored != record.files:
            raise RegistryError(
                f"{record.tag}: BentoML metadata hashes disagree with the registry index "
                "(model folder edited); refusing to use it"
            )
        return model

    def model_dir(self, tag: str) -> Path:
        """Folder of a registered version in the BentoML store (not verified)."""
        return Path(self._bento_model(self.record(tag)).path)

    def verify(self, tag: str) -> VersionRecord:
        """Check every stored file of ``tag`` against the registry index; return its record."""
        record = self.record(tag)
        verify_files(Path(self._bento_model(record).path), record.files, record.tag)
        return record

    # ----------------------------------------------------------------------------- reading
    def record(self, tag: str) -> VersionRecord:
        return self.records.read(self.tag_of(tag).split(":", 1)[1])

    def pointer_stamp(self) -> tuple[Any, ...]:
        """Cheap change detector for the pointer files (inode, mtime, size); pollers compare it."""
        out: list[Any] = []
        for path in (self.pointer_path, self.backup_path):
            try:
                st = path.stat()
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def pointer(self) -> PointerState:
        """Current pointer state (re-parsed only when the files changed; recovers from damage)."""
        stamp = self.pointer_stamp()
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1]
        state = read_pointer(self.pointer_path, self.backup_path, self.audit_log.read)
        self._cache = (stamp, state)
        return state

    def production_tag(self) -> str | None:
        """Tag of the production version, or None before the first promotion. A stat when unchanged."""
        return self.pointer().current

    def history(self) -> list[dict[str, Any]]:
        return list(self.pointer().history)

    def _stage(self, record: VersionRecord, state: PointerState, ever: set[str]) -> str:
        if record.rejected:
            return "rejected"
        if record.tag == state.current:
            return "production"
        return "archived" if record.tag in ever else "candidate"

    def versions(self) -> list[VersionInfo]:
        """Every registered version, oldest first, with its stage."""
        state = self.pointer()
        ever = set(state.production_tags())
        records, _ = self.records.all()
        return [VersionInfo(r, self._stage(r, state, ever)) for r in records]

    def version(self, tag: str) -> VersionInfo:
        record = self.record(tag)
        state = self.pointer()
        return VersionInfo(record, self._stage(record, state, set(state.production_tags())))

    def card(self, tag: str) -> dict[str, Any]:
        """The stored model card (JSON) of ``tag``, hash-verified."""
        record = self.record(tag)
        folder = Path(self._bento_model(record).path)
        verify_files(folder, {CARD_JSON_NAME: record.files[CARD_JSON_NAME]}, record.tag)
        card: dict[str, Any] = json.loads((folder / CARD_JSON_NAME).read_bytes())
        return card

    def load(self, tag: str) -> Any:
        """The verified model object of ``tag``: hashes checked against the index, types restricted."""
        record = self.record(tag)
        folder = Path(self._bento_model(record).path)
        others = {k: v for k, v in record.files.items() if k != record.artifact}
        verify_files(folder, others, record.tag)
        return load_skops(folder / record.artifact, record.artifact_sha256, record.tag)

    def load_production(self) -> tuple[str, Any]:
        """``(tag, model)`` of the production version; ``RegistryError`` if none or it fails checks."""
        tag = self.production_tag()
        if tag is None:
            raise RegistryError("no version is in production yet (run `plantwatch promote`)")
        return tag, self.load(tag)

    # --------------------------------------------------------------------------- audit
    def audit(self, event: str, *, actor: str | None = None, **fields: Any) -> dict[str, Any]:
        """Append one event to ``registry/audit.jsonl`` (e.g. ``audit("retrain_trigger", reason=...)``)."""
        return self.audit_log.append(event, actor=actor, **fields)

    def audit_events(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Audit events oldest first; the last ``limit`` of them when given."""
        events = self.audit_log.read()
        return events[-limit:] if limit else events

    # ---------------------------------------------------------------------------- writing
    def _acquire(self, lock: FileLock, what: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire()
        except Timeout:
            raise RegistryError(
                f"registry busy: another {what} held the lock for more than {self.cfg.lock_timeout_s:g} s"
            ) from None

    def _collect_debris(self) -> None:
        """Remove store folders of registrations that died before writing their record.

        Safe only under the registration lock: then no registration is in flight. Only folders
        named like plantwatch versions are touched.
        """
        assert self.bentoml_home is not None
        name_dir = self.bentoml_home / "models" / self.cfg.model_name
        if not name_dir.is_dir():
            return
        for child in name_dir.iterdir():
            if child.is_dir() and is_version_id(child.name) and not self.records.exists(child.name):
                log.warning("removing %s: left by a registration that did not finish", child)
                shutil.rmtree(child, ignore_errors=True)
        remove_stale_temps(self.records.folder)

    def register(
        self,
        artifact: Path,
        evidence: Evidence,
        *,
        rejected_reasons: Sequence[str] = (),
        actor: str | None = None,
    ) -> VersionInfo:
        """Store ``artifact`` as a new version: ``candidate``, or ``rejected`` when reasons are given.

        The artifact must load under the trusted-types policy (a file the service would refuse is
        never registered). The record (with the hashes) is written only after the store folder is
        complete and verified, so a crash at any point leaves either nothing or a whole version.
        """
        import bentoml

        artifact = Path(artifact)
        if not artifact.is_file():
            raise RegistryError(f"{artifact}: model file not found (run the train stage first)")
        sha = sha256_file(artifact)
        model = load_skops(artifact, sha, f"{artifact}")
        actor = current_actor(actor)
        rejected = bool(rejected_reasons)
        self._acquire(self._register_lock, "registration")
        try:
            self._collect_debris()
            existing = self.records.versions()
            version = new_version_id(datetime.now(UTC), existing[-1] if existing else None)
            tag = f"{self.cfg.model_name}:{version}"
            created = utc_now()
            card = build_model_card(
                tag=tag,
                created=created,
                kind=evidence.kind,
                train_info=evidence.train_info,
                holdout=evidence.holdout,
                cv=evidence.cv,
                gates=evidence.gates,
                passed=not rejected,
                reasons=rejected_reasons,
                threshold=_float_attr(model, "threshold_"),
                review_low=_float_attr(model, "review_low_"),
                alert_budget=evidence.alert_budget,
                intended_use=self.cfg.intended_use,
                limitations=self.cfg.limitations,
                data_sources=evidence.data_sources,
                artifact=ARTIFACT_NAME,
                artifact_sha256=sha,
                gate_report=evidence.gate_report,
            )
            extra = {CARD_JSON_NAME: dumps(card).encode(), CARD_MD_NAME: render_model_card_md(card).encode()}
            files = {ARTIFACT_NAME: sha, **{k: hashlib.sha256(v).hexdigest() for k, v in extra.items()}}
            record = self._new_record(tag, version, created, evidence, card, files, rejected_reasons, actor)
            with bentoml.models.create(
                tag,
                labels=self._labels(record),
                metadata=self._metadata(record, card),
                _model_store=self._store(),
            ) as bento:
                folder = Path(bento.path)
                shutil.copyfile(artifact, folder / ARTIFACT_NAME)
                _stored_bytes(folder, extra)
                checkpoint("register.after_artifact_write")
            checkpoint("register.after_store_save")
            stored = Path(self._store().get(tag).path)
            _fsync_tree(stored)
            verify_files(stored, files, tag)  # the store copy is complete before the record says so
            self.records.write(record)
            checkpoint("register.after_record_write")
        finally:
            self._register_lock.release()
        self.audit_log.append(
            "reject" if rejected else "register",
            actor=actor,
            to=tag,
            reason="; ".join(rejected_reasons) if rejected else "gates passed",
            gate_report=evidence.gate_report,
            data_hash=record.lineage.get("data_hash"),
            kind=evidence.kind,
            sha256=sha,
        )
        log.debug("registered %s as %s", tag, record.verdict)
        return VersionInfo(record, "rejected" if rejected else "candidate")

    def _new_record(
        self,
        tag: str,
        version: str,
        created: str,
        evidence: Evidence,
        card: Mapping[str, Any],
        files: dict[str, str],
        reasons: Sequence[str],
        actor: str,
    ) -> VersionRecord:
        data = card["data"]
        return VersionRecord(
            tag=tag,
            version=version,
            created=created,
            kind=evidence.kind,
            verdict="rejected" if reasons else "candidate",
            reasons=tuple(reasons),
            files=files,
            artifact=ARTIFACT_NAME,
            metrics=dict(card["metrics"]["holdout"].get(evidence.kind, {})),
            gates_passed=not reasons,
            lineage={
                "git_commit": data["git_commit"],
                "data_hash": data["data_hash"],
                "params_hash": data["params_hash"],
                "training_window": data["training_window"],
                "gate_report": evidence.gate_report,
                "gate_report_sha256": evidence.gate_report_sha256,
            },
            actor=actor,
        )

    @staticmethod
    def _labels(record: VersionRecord) -> dict[str, str]:
        lineage = record.lineage
        return {
            "kind": record.kind,
            "verdict": record.verdict,
            "gates": "passed" if record.gates_passed else "failed",
            "git_commit": str(lineage.get("git_commit") or "unknown"),
            "data_hash": str(lineage.get("data_hash") or "unknown"),
        }

    @staticmethod
    def _metadata(record: VersionRecord, card: Mapping[str, Any]) -> dict[str, Any]:
        meta = {
            "kind": record.kind,
            "verdict": record.verdict,
            "reasons": list(record.reasons),
            "sha256": dict(record.files),
            "artifact": record.artifact,
            "artifact_sha256": record.artifact_sha256,
            **record.lineage,
            "metrics": record.metrics,
            "cv": card["metrics"]["cv"].get(record.kind, {}),
            "gates": card["gates"],
            "operating_point": card["operating_point"],
        }
        return dict(_bento_metadata(json_safe(meta)))

    def _move_pointer(
        self, choose: Callable[[PointerState], VersionRecord], action: str, actor: str | None, reason: str
    ) -> PointerState:
        """Under the pointer lock: read the state, pick + verify the target, write, audit."""
        actor = current_actor(actor)
        self._acquire(self._pointer_lock, "promotion or rollback")
        try:
            remove_stale_temps(self.folder)
            state = read_pointer(self.pointer_path, self.backup_path, self.audit_log.read)
            checkpoint("pointer.after_read")
            record = choose(state)
            if record.tag == state.current:
                raise RegistryError(f"{record.tag} is already in production")
            verify_files(Path(self._bento_model(record).path), record.files, record.tag)
            at = utc_now()
            entry = {
                "tag": record.tag,
                "from": state.current,
                "at": at,
                "actor": actor,
                "reason": reason,
                "action": action,
            }
            new = state.with_entry(entry)
            checkpoint("promote.before_pointer_write")
            write_pointer(self.pointer_path, self.backup_path, new, self.cfg.model_name, at)
            checkpoint("promote.after_pointer_write")
            if state.source in ("backup", "audit"):
                self.audit_log.append(
                    "pointer_recovered", actor=actor, to=state.current, reason=f"from {state.source}"
                )
            # Inside the lock: the audit's pointer events keep the pointer's order (it can be replayed).
            self.audit_log.append(
                action,
                actor=actor,
                from_=state.current,
                to=record.tag,
                reason=reason,
                gate_report=record.lineage.get("gate_report"),
                data_hash=record.lineage.get("data_hash"),
            )
        finally:
            self._pointer_lock.release()
        log.debug("%s: %s -> %s", action, state.current, record.tag)
        self._cache = None
        return new

    def promote(self, tag: str, actor: str | None = None, reason: str = "") -> PointerState:
        """Make a registered, non-rejected, intact version production."""
        record = self.record(tag)
        if record.rejected:
            raise RegistryError(
                f"{record.tag} was rejected by the gates ({'; '.join(record.reasons)}); not promoted"
            )
        return self._move_pointer(lambda _state: record, "promote", actor, reason or "promoted")

    def rollback(self, to: str | None = None, reason: str = "", actor: str | None = None) -> PointerState:
        """Make an earlier production version production again (default: the one before the current).

        Versions once rolled back *from* are never picked automatically (name them with ``to``).
        """
        if not reason.strip():
            raise UsageError("rollback needs a reason (--reason)")
        target = self.tag_of(to) if to is not None else None

        def choose(state: PointerState) -> VersionRecord:
            if state.current is None:
                raise RegistryError("nothing is in production, so there is nothing to roll back")
            tag = target if target is not None else self._previous_production(state)
            record = self.record(tag)
            if record.rejected:
                raise RegistryError(f"{tag} was rejected by the gates; refusing to roll back to it")
            if tag == state.current:
                raise RegistryError(f"{tag} is already in production")
            if tag not in state.production_tags():
                raise RegistryError(
                    f"{tag} has never been in production; promote it instead (plantwatch promote --tag)"
                )
            return record

        return self._move_pointer(choose, "rollback", actor, reason.strip())

    @staticmethod
    def _previous_production(state: PointerState) -> str:
        bad = {e.get("from") for e in state.history if e["action"] == "rollback"}
        for entry in reversed(state.history):
            if entry["tag"] != state.current and entry["tag"] not in bad:
                return str(entry["tag"])
        raise RegistryError(f"no earlier production version to roll back to from {state.current}")
