"""Deterministic rules applied after the model, inside ``DetectorBundle.score_frame``.

The model is statistical; some facts are not. A reading outside a sensor's physical range is an
alert whatever the model thinks ("limit:<sensor>"); a missing reading deserves a person's look
("missing:<sensor>", decision at least ``review``); operators can silence planned maintenance and
known-bad assets or sensors ("suppressed:..." with decision ``normal``). Suppression wins over
everything, but the rules that would have fired are still listed so the silencing is visible.

The rules travel with the model as plain data (``rules_from_config``), so a bundle scores the same in
batch and in the service and can be serialised with skops without any custom type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from plantwatch import schema
from plantwatch.config.data import DataConfig
from plantwatch.config.rules import RulesConfig

#: Decision severities; a rule can only raise a decision, suppression resets it to normal.
_RANK = {schema.DECISION_NORMAL: 0, schema.DECISION_REVIEW: 1, schema.DECISION_ALERT: 2}
_DECISION_OF_RANK = np.array(schema.DECISIONS, dtype=object)


def rules_from_config(rules: RulesConfig, data: DataConfig) -> dict[str, Any]:
    """The rules as builtins-only data (limits from ``data.sensors``; times as ISO strings)."""
    limits: dict[str, list[float | None]] = {}
    if rules.physical_limits:
        limits = {
            name: [spec.min, spec.max]
            for name, spec in data.sensors.items()
            if spec.min is not None or spec.max is not None
        }
    return {
        "limits": limits,
        "missing_sensor": bool(rules.missing_sensor),
        "maintenance": [
            {"asset": w.asset, "start": _iso_utc(w.start), "end": _iso_utc(w.end)} for w in rules.maintenance
        ],
        "suppress_assets": list(rules.suppress_assets),
        "suppress_sensors": list(rules.suppress_sensors),
    }


def _iso_utc(t: Any) -> str:
    """Canonical frames are tz-naive UTC: convert aware times to UTC and drop the zone."""
    ts = pd.Timestamp(t)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.isoformat()


def decisions_from_scores(scores: np.ndarray, threshold: float, review_low: float) -> np.ndarray:
    """The model's own decision per row, as severity ranks (0 normal, 1 review, 2 alert)."""
    s = np.asarray(scores, dtype=float)
    ranks = np.zeros(s.shape, dtype=np.int8)
    ranks[s >= review_low] = 1
    ranks[s >= threshold] = 2
    return ranks


def apply_rules(
    df: pd.DataFrame,
    model_ranks: np.ndarray,
    top_sensor: Sequence[str | None],
    rules: dict[str, Any],
    sensors: Sequence[str],
) -> tuple[np.ndarray, list[list[str]]]:
    """Final decision per row (str array) and the names of the rules that fired, in row order.

    ``model_ranks`` is the model's decision (``decisions_from_scores``); ``top_sensor`` the sensor that
    contributes most to each row's score, used to drop model alerts caused by a suppressed sensor.
    """
    n = len(df)
    ranks = np.asarray(model_ranks, dtype=np.int8).copy()
    suppressed_sensors = set(rules.get("suppress_sensors", []))
    raise_to: list[tuple[str, np.ndarray, int]] = []
    for sensor in sensors:
        if sensor in suppressed_sensors:
            continue
        values = df[sensor].to_numpy(dtype=float) if sensor in df.columns else np.full(n, np.nan)
        lo, hi = rules.get("limits", {}).get(sensor, [None, None])
        outside = np.zeros(n, dtype=bool)
        if lo is not None:
            outside |= values < lo
        if hi is not None:
            outside |= values > hi
        raise_to.append((f"limit:{sensor}", outside, _RANK[schema.DECISION_ALERT]))
        if rules.get("missing_sensor", True):
            raise_to.append((f"missing:{sensor}", ~np.isfinite(values), _RANK[schema.DECISION_REVIEW]))

    # a suppressed sensor drops only the MODEL's verdict it caused; other sensors' rules still fire
    dropped: list[tuple[str, np.ndarray]] = []
    tops = np.asarray(list(top_sensor), dtype=object)
    for sensor in sorted(suppressed_sensors):
        mask = (tops == sensor) & (ranks > 0)
        ranks[mask] = 0
        dropped.append((f"suppressed:sensor:{sensor}", mask))
    for _, mask, rank in raise_to:
        ranks = np.where(mask, np.maximum(ranks, rank), ranks).astype(np.int8)
    assets = df[schema.ASSET].astype(str).to_numpy() if schema.ASSET in df.columns else np.full(n, "")
    # whole-row silencing: the asset is suppressed, or under planned maintenance
    silence = [("suppressed:asset", np.isin(assets, list(rules.get("suppress_assets", []))))]
    if rules.get("maintenance"):
        ts = np.asarray(df[schema.TIMESTAMP], dtype="datetime64[ns]")
        in_window = np.zeros(n, dtype=bool)
        for w in rules["maintenance"]:
            start = np.datetime64(pd.Timestamp(w["start"]).to_datetime64(), "ns")
            end = np.datetime64(pd.Timestamp(w["end"]).to_datetime64(), "ns")
            in_window |= (assets == w["asset"]) & (ts >= start) & (ts < end)
        silence.append(("suppressed:maintenance", in_window))
    for _, mask in silence:
        ranks[mask] = 0
    fired = [(name, mask) for name, mask, _ in raise_to] + dropped + silence
    names: list[list[str]] = [[] for _ in range(n)]
    for name, mask in fired:
        for i in np.flatnonzero(mask):
            names[i].append(name)
    return _DECISION_OF_RANK[ranks], names

