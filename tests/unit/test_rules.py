"""Deterministic rules: limits alert, missing readings go to review, suppression silences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from plantwatch.config import DataConfig, RulesConfig
from plantwatch.errors import ConfigError
from plantwatch.rules import apply_rules, decisions_from_scores, rules_from_config

SENSORS = ["temperature", "vibration"]
DATA = DataConfig(
    sources=["x.csv"],
    sensors={"temperature": {"min": -20.0, "max": 150.0}, "vibration": {"min": 0.0, "max": 40.0}},
)


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime(
                ["2024-01-01 00:00", "2024-01-01 00:01", "2024-01-01 00:02", "2024-01-01 00:03",
                 "2024-01-01 00:00", "2024-01-01 00:01"]
            ),
            "asset": ["p1", "p1", "p1", "p1", "p2", "p2"],
            "temperature": [50.0, 151.0, np.nan, 50.0, 50.0, 50.0],
            "vibration": [1.0, 1.0, 1.0, -0.5, 1.0, 1.0],
        }
    )


def _apply(rules: RulesConfig, model: list[str] | None = None, tops: list[str] | None = None):
    df = _frame()
    ranks = np.array([{"normal": 0, "review": 1, "alert": 2}[d] for d in (model or ["normal"] * len(df))])
    return apply_rules(df, ranks, tops or ["temperature"] * len(df), rules_from_config(rules, DATA), SENSORS)


def test_limits_alert_and_missing_goes_to_review() -> None:
    decisions, fired = _apply(RulesConfig())
    assert decisions.tolist() == ["normal", "alert", "review", "alert", "normal", "normal"]
    assert fired == [[], ["limit:temperature"], ["missing:temperature"], ["limit:vibration"], [], []]


def test_rules_only_raise_model_decisions() -> None:
    decisions, _ = _apply(RulesConfig(), model=["alert", "review", "alert", "review", "review", "normal"])
    assert decisions.tolist() == ["alert", "alert", "alert", "alert", "review", "normal"]


def test_rules_can_be_switched_off() -> None:
    decisions, fired = _apply(RulesConfig(physical_limits=False, missing_sensor=False))
    assert decisions.tolist() == ["normal"] * 6 and fired == [[]] * 6


def test_maintenance_window_suppresses_but_keeps_the_trace() -> None:
    cfg = RulesConfig(maintenance=[{"asset": "p1", "start": "2024-01-01T00:01:00",
                                    "end": "2024-01-01T00:03:00"}])
    decisions, fired = _apply(cfg, model=["alert"] * 6)
    assert decisions.tolist() == ["alert", "normal", "normal", "alert", "alert", "alert"]
    assert fired[1] == ["limit:temperature", "suppressed:maintenance"]
    assert fired[2] == ["missing:temperature", "suppressed:maintenance"]


def test_timezone_aware_window_is_read_as_utc() -> None:
    cfg = RulesConfig(maintenance=[{"asset": "p2", "start": "2024-01-01T01:00:00+01:00",
                                    "end": "2024-01-01T01:01:00+01:00"}])
    assert rules_from_config(cfg, DATA)["maintenance"][0]["start"] == "2024-01-01T00:00:00"
    decisions, fired = _apply(cfg, model=["alert"] * 6)
    assert decisions.tolist()[4:] == ["normal", "alert"] and fired[4] == ["suppressed:maintenance"]


def test_suppressed_asset() -> None:
    decisions, fired = _apply(RulesConfig(suppress_assets=["p1"]), model=["alert"] * 6)
    assert decisions.tolist() == ["normal"] * 4 + ["alert", "alert"]
    assert fired[0] == ["suppressed:asset"] and fired[1] == ["limit:temperature", "suppressed:asset"]


def test_suppressed_sensor_drops_its_rules_and_the_model_alerts_it_causes() -> None:
    tops = ["temperature", "vibration", "vibration", "temperature", "temperature", "vibration"]
    decisions, fired = _apply(RulesConfig(suppress_sensors=["temperature"]), model=["alert"] * 6, tops=tops)
    # rows 0, 3, 4: the model alerted because of temperature -> dropped; row 3 still breaks vibration's limit
    assert decisions.tolist() == ["normal", "alert", "alert", "alert", "normal", "alert"]
    assert fired[0] == ["suppressed:sensor:temperature"]
    assert fired[1] == [] and fired[2] == []  # temperature's limit / missing rules are silenced
    assert fired[3] == ["limit:vibration", "suppressed:sensor:temperature"]


def test_missing_sensor_column_counts_as_missing() -> None:
    df = _frame().drop(columns=["vibration"])
    decisions, fired = apply_rules(df, np.zeros(len(df)), [None] * len(df),
                                   rules_from_config(RulesConfig(), DATA), SENSORS)
    assert all("missing:vibration" in f for f in fired)
    assert set(decisions.tolist()) == {"review", "alert"}


def test_decisions_from_scores() -> None:
    ranks = decisions_from_scores(np.array([0.1, 0.5, 0.7, 0.9]), threshold=0.7, review_low=0.5)
    assert ranks.tolist() == [0, 1, 2, 2]


def test_bad_maintenance_window_is_a_config_error() -> None:
    from plantwatch.config import parse_params

    with pytest.raises(ConfigError, match="rules.maintenance.0"):
        parse_params({"data": {"sources": ["x"], "sensors": ["a"]},
                      "rules": {"maintenance": [{"asset": "p", "start": "2024-01-02", "end": "2024-01-01"}]}})
