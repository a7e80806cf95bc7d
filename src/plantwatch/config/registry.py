"""``registry:`` block — the BentoML-backed model registry.

BentoML stores the versions; plantwatch keeps stages, the production pointer, the integrity index
and the audit log itself (see ``plantwatch.registry``). The texts here end up in every model card.
"""

from __future__ import annotations

from pydantic import Field, PositiveInt, field_validator

from plantwatch.config.base import StrictModel

#: BentoML's rule for a tag's name (lowercase, ``-._`` inside, alphanumeric at both ends, <= 63 chars).
_TAG_NAME_PATTERN = r"^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$"
_TAG_NAME_MAX = 63


class RegistryConfig(StrictModel):
    #: Name of the model in the BentoML store; versions are ``<model_name>:<version>``.
    model_name: str = Field(
        default="plantwatch-detector", pattern=_TAG_NAME_PATTERN, max_length=_TAG_NAME_MAX
    )
    #: How long a promotion / rollback / registration waits for another one to finish.
    lock_timeout_s: float = Field(default=30.0, gt=0.0)
    #: Holdout metrics shown by ``plantwatch models`` (names as written by the evaluate stage).
    key_metrics: list[str] = Field(
        default_factory=lambda: ["pr_auc", "event_recall", "false_alarms_per_asset_day"], min_length=1
    )
    #: Lines ``plantwatch audit`` shows by default (``--limit 0`` shows all).
    audit_list_limit: PositiveInt = 50
    #: Model card: what the model is for (and therefore what it must not be used for).
    intended_use: str = (
        "Flag anomalous readings in industrial equipment telemetry (one score per reading and asset) "
        "so that operators review or act on them. Decision support for people, not an automatic "
        "shutdown or safety interlock."
    )
    #: Model card: known limitations every version shares (version-specific notes come from the gate).
    limitations: list[str] = Field(
        default_factory=lambda: [
            "Trained on historical telemetry of the listed assets and sensors; new assets, sensors or "
            "operating regimes need retraining before its scores mean anything.",
            "Labels are sparse and partly simulated; metrics are estimates with the CV intervals shown.",
            "The alert threshold is tuned to the alert budget on past data; drift changes the real "
            "false-alarm rate (monitoring watches it).",
            "Scores rank anomalousness; they are not calibrated probabilities of failure.",
        ]
    )

    @field_validator("key_metrics")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("key_metrics must not repeat a metric")
        return value
