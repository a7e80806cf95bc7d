"""Version ids and plantwatch's own per-version records (the integrity index).

Each registered version gets one immutable JSON record ``registry/versions/<version>.json``,
written once, atomically, after its model folder is complete in the BentoML store. The record holds
the sha256 of every stored file: it is the reference the artifact is checked against, kept outside
the BentoML folder so that editing that folder's metadata cannot make a swapped file pass. A version
exists for plantwatch only once its record exists; a store folder without one is debris of a crash.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from plantwatch.errors import RegistryError
from plantwatch.registry.atomic import atomic_write_json

log = logging.getLogger(__name__)

RECORD_SCHEMA_VERSION = 1
_VERSION_TIME_FORMAT = "%Y%m%d-%H%M%S-%f"
_VERSION_RE = re.compile(r"^\d{8}-\d{6}-\d{6}-[0-9a-f]{6}$")
_RANDOM_BYTES = 3
_MIN_STEP = timedelta(microseconds=1)


def new_version_id(now: datetime, latest: str | None) -> str:
    """``YYYYMMDD-HHMMSS-ffffff-<6 hex>`` in UTC: sorts by time as text, unique by the random tail.

    Strictly after ``latest`` even if the clock stepped back, so text order is registration order.
    """
    stamp = now.astimezone(UTC)
    if latest is not None and _VERSION_RE.match(latest):
        last = datetime.strptime(latest[: -(2 * _RANDOM_BYTES + 1)], _VERSION_TIME_FORMAT).replace(tzinfo=UTC)
        stamp = max(stamp, last + _MIN_STEP)
    return f"{stamp.strftime(_VERSION_TIME_FORMAT)}-{secrets.token_hex(_RANDOM_BYTES)}"


def is_version_id(text: str) -> bool:
    return bool(_VERSION_RE.match(text))


@dataclass(frozen=True)
class VersionRecord:
    """What plantwatch knows about one registered version (immutable once written)."""

    tag: str
    version: str
    created: str
    kind: str
    verdict: str  # "candidate" (passed the gates) | "rejected"
    reasons: tuple[str, ...]
    files: dict[str, str]  # file name in the model folder -> sha256
    artifact: str
    metrics: dict[str, Any]
    gates_passed: bool
    lineage: dict[str, Any]  # git commit, data hash, params hash, training window, gate report ...
    actor: str

    @property
    def rejected(self) -> bool:
        return self.verdict == "rejected"

    @property
    def artifact_sha256(self) -> str:
        return self.files[self.artifact]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": RECORD_SCHEMA_VERSION,
            "tag": self.tag,
            "version": self.version,
            "created": self.created,
            "kind": self.kind,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "files": dict(self.files),
            "artifact": self.artifact,
            "metrics": self.metrics,
            "gates_passed": self.gates_passed,
            "lineage": self.lineage,
            "actor": self.actor,
        }

    @classmethod
    def from_json(cls, raw: Any) -> VersionRecord:
        if not isinstance(raw, dict) or raw.get("schema_version") != RECORD_SCHEMA_VERSION:
            raise ValueError("not a plantwatch version record")
        files = raw["files"]
        if not isinstance(files, dict) or raw["artifact"] not in files:
            raise ValueError("record lists no artifact hash")
        return cls(
            tag=str(raw["tag"]),
            version=str(raw["version"]),
            created=str(raw["created"]),
            kind=str(raw["kind"]),
            verdict=str(raw["verdict"]),
            reasons=tuple(str(r) for r in raw.get("reasons", [])),
            files={str(k): str(v) for k, v in files.items()},
            artifact=str(raw["artifact"]),
            metrics=dict(raw.get("metrics") or {}),
            gates_passed=bool(raw["gates_passed"]),
            lineage=dict(raw.get("lineage") or {}),
            actor=str(raw.get("actor", "")),
        )


@dataclass(frozen=True)
class RecordStore:
    """``registry/versions/``: one record per version, named by the version id."""

    folder: Path

    def path(self, version: str) -> Path:
        return self.folder / f"{version}.json"

    def write(self, record: VersionRecord) -> None:
        path = self.path(record.version)
        if path.exists():
            raise RegistryError(f"{record.tag}: a record already exists; versions are immutable")
        atomic_write_json(path, record.to_json())

    def exists(self, version: str) -> bool:
        return self.path(version).is_file()

    def read(self, version: str) -> VersionRecord:
        path = self.path(version)
        if not is_version_id(version) or not path.is_file():
            raise RegistryError(f"version {version!r} is not registered")
        try:
            return VersionRecord.from_json(json.loads(path.read_bytes()))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise RegistryError(
                f"version {version}: its registry record {path.name} is unreadable ({err})"
            ) from None

    def versions(self) -> list[str]:
        """Registered version ids, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.json") if is_version_id(p.stem))

    def all(self) -> tuple[list[VersionRecord], list[str]]:
        """Every readable record (oldest first) and the versions whose record is unreadable."""
        good, bad = [], []
        for version in self.versions():
            try:
                good.append(self.read(version))
            except RegistryError as err:
                log.warning("%s", err)
                bad.append(version)
        return good, bad
