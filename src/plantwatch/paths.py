"""Where a plantwatch project keeps its files.

A project is a folder with a ``params.yaml`` (like a DVC repo). Commands run from it; tests point
``PLANTWATCH_ROOT`` (or pass ``root``) at a temporary copy so nothing touches the real tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def project_root(root: Path | str | None = None) -> Path:
    """The project folder: explicit ``root``, else ``$PLANTWATCH_ROOT``, else the current directory."""
    if root is not None:
        return Path(root).resolve()
    env = os.environ.get("PLANTWATCH_ROOT")
    return Path(env).resolve() if env else Path.cwd().resolve()


@dataclass(frozen=True)
class ProjectPaths:
    """Fixed layout of a project's working files (user-facing data paths live in params.yaml)."""

    root: Path

    @classmethod
    def at(cls, root: Path | str | None = None) -> ProjectPaths:
        return cls(project_root(root))

    def resolve(self, p: str | Path) -> Path:
        """A params path (relative to the project root) as an absolute path."""
        p = Path(p)
        return p if p.is_absolute() else self.root / p

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def expectations(self) -> Path:
        return self.root / "expectations"

    @property
    def gx_root(self) -> Path:
        return self.root / "gx"

    @property
    def quarantine(self) -> Path:
        return self.root / "data" / "quarantine"

    @property
    def ledger(self) -> Path:
        return self.quarantine / "ledger.jsonl"

    @property
    def processed(self) -> Path:
        return self.root / "data" / "processed"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def bentoml_home(self) -> Path:
        return Path(os.environ.get("BENTOML_HOME", self.root / ".bentoml"))

    @property
    def registry(self) -> Path:
        """plantwatch's own registry state: production pointer, audit log, lock."""
        return self.root / "registry"

    @property
    def inference_log(self) -> Path:
        return self.root / "data" / "inference"

    @property
    def review_db(self) -> Path:
        return self.root / "data" / "review" / "queue.sqlite"

    @property
    def monitoring(self) -> Path:
        return self.root / "monitoring"
