"""Model registry: BentoML stores the versions; plantwatch keeps stages, pointer, integrity and audit.

Public API (the service and flows use only these names)::

    reg = Registry(root, params.registry)
    reg.register(artifact, evidence, rejected_reasons=(), actor=None) -> VersionInfo
    reg.promote(tag, actor=None, reason="") -> PointerState
    reg.rollback(to=None, reason="...", actor=None) -> PointerState
    reg.production_tag() -> str | None          # cheap: a stat, a re-parse only on change
    reg.pointer_stamp() -> tuple                  # what a poller compares to notice a change
    reg.load(tag) -> object                       # hash-verified, trusted types only
    reg.load_production() -> (tag, object)
    reg.versions() -> list[VersionInfo]; reg.version(tag); reg.card(tag); reg.history()
    reg.audit(event, **fields); reg.audit_events(limit=None)

See ``api.py`` for the file layout and ``promotion.py`` for the promote stage.
"""

from plantwatch.registry.api import (
    ARTIFACT_NAME,
    CARD_JSON_NAME,
    CARD_MD_NAME,
    STAGES,
    Evidence,
    Registry,
    VersionInfo,
)
from plantwatch.registry.audit import current_actor
from plantwatch.registry.card import build_model_card, render_model_card_md
from plantwatch.registry.integrity import TRUSTED_MODULE_PREFIXES
from plantwatch.registry.pointer import PointerState
from plantwatch.registry.versions import VersionRecord

__all__ = [
    "ARTIFACT_NAME",
    "CARD_JSON_NAME",
    "CARD_MD_NAME",
    "STAGES",
    "TRUSTED_MODULE_PREFIXES",
    "Evidence",
    "PointerState",
    "Registry",
    "VersionInfo",
    "VersionRecord",
    "build_model_card",
    "current_actor",
    "render_model_card_md",
]
