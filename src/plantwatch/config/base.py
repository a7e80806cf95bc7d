"""Shared pydantic base for config blocks."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Config blocks reject unknown keys and are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)
