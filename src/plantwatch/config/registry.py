"""``registry:`` block — the BentoML-backed model registry."""

from __future__ import annotations

from plantwatch.config.base import StrictModel


class RegistryConfig(StrictModel):
    model_name: str = "plantwatch-detector"
