"""Fleet simulator: the embedded default data source (pure core) plus data-quality defect injection.

``simulate_fleet`` produces the canonical frame (see docs/ARCHITECTURE.md) for a fleet of
VFD-driven centrifugal pumps. The physics is deliberately simple but *coupled*, because the point of
the demo is that a detector with engineered features (rolling statistics, residuals against load,
stuck indicators) beats a plain IsolationForest on raw readings:

* load follows a three-shift daily pattern (weekends lower), smoothed, plus slow random drift;
* rpm and flow are proportional to load (affinity laws), pressure grows with load², current with
  load³ (hydraulic power), temperature follows power through a first-order thermal lag, vibration
  grows with load²; every asset has its own rated values; measurement noise is added last.

Fault episodes mostly break these relationships instead of producing out-of-range values (see
``plantwatch.config.simulate`` for their shapes). ``scenario="drift"`` moves the operating regime
and recalibrates the pressure transmitter, without faults, for the monitoring stage.

``inject_defects`` / ``drop_column`` / ``with_wrong_types`` damage a frame the way real landing data
is damaged, for the validation stage's tests. ``write_frame`` is the thin I/O shell.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from plantwatch.config import DataConfig, SimulateConfig
from plantwatch.config.simulate import FAULT_KINDS, DefectsConfig, FaultKind, FaultsConfig
from plantwatch.errors import UsageError
from plantwatch.schema import ASSET, FAULT_KIND, LABEL, TIMESTAMP

log = logging.getLogger(__name__)

Scenario = Literal["normal", "drift"]
SCENARIOS: tuple[Scenario, ...] = ("normal", "drift")
#: Sensors the pump model produces; ``data.sensors`` must be a subset (output follows its order).
SIMULATED_SENSORS: tuple[str, ...] = ("temperature", "vibration", "pressure", "flow", "current", "rpm")
#: ``fault_kind`` of normal rows.
NO_FAULT = "none"
#: Row-level defects of ``inject_defects`` (keys of the returned mapping).
DEFECT_KINDS: tuple[str, ...] = ("missing", "duplicate", "out_of_order", "out_of_range")
#: Output formats by file suffix (``write_frame``).
SUFFIXES: dict[str, str] = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet"}

# Unit conversions and calendar facts (not tunables).
_S_PER_MIN = 60.0
_S_PER_H = 3600.0
_S_PER_DAY = 86400.0
_H_PER_DAY = 24.0
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)
_WEEKEND = (5, 6)  # Saturday, Sunday
#: Fault kinds by code: code 0 is a normal row, code i is ``FAULT_KINDS[i - 1]``.
_KIND_BY_CODE = np.array((NO_FAULT, *FAULT_KINDS), dtype=object)
#: Spikes sit on even offsets of their window, so two spikes are never adjacent readings.
_SPIKE_STRIDE = 2
#: A spike that would cross a physical limit is shortened to this share of the room left.
_SPIKE_HEADROOM = 0.9
#: Random placement attempts per episode before giving up (the fleet is then saturated).
_PLACEMENT_TRIES = 200
#: Share of out-of-range defects above the upper limit (when a sensor has both limits).
_UPPER_SHARE = 0.5
#: inject_defects works in blocks of rows; each defect sits in the middle of its own block so that
#: defects never touch each other or an asset boundary.
_DEFECT_BLOCK = 5


# --------------------------------------------------------------------------------------------------
# Fleet simulation (pure core)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Streams:
    """Independent random streams, so e.g. the drift scenario keeps the same assets and noise."""

    assets: np.random.Generator
    load: np.random.Generator
    noise: np.random.Generator
    faults: np.random.Generator

    @classmethod
    def from_seed(cls, seed: int, variant: int = 0) -> _Streams:
        """``variant`` > 0 keeps the fleet (asset baselines from ``seed``) but draws new load, noise
        and faults: the same plant on another day, e.g. the traffic a deployed model scores."""
        children = np.random.SeedSequence(seed).spawn(4)
        streams = [np.random.default_rng(c) for c in children]
        if variant:
            fresh = np.random.SeedSequence([seed, variant]).spawn(3)
            streams[1:] = [np.random.default_rng(c) for c in fresh]
        return cls(*streams)


@dataclass
class _Episode:
    """One planned fault episode: an occupied window of ``length`` readings on one asset."""

    kind: FaultKind
    asset: int
    start: int
    length: int
    labelled: int
    sensor: str | None = None
    values: dict[str, float] = field(default_factory=dict)
    #: Spike episodes only: the reading indices that carry a spike (the only labelled rows).
    spike_rows: np.ndarray | None = None


def simulate_fleet(
    sim: SimulateConfig,
    data: DataConfig,
    *,
    scenario: Scenario = "normal",
    start: pd.Timestamp | None = None,
    seed: int | None = None,
    assets: int | None = None,
    days: float | None = None,
    variant: int = 0,
) -> pd.DataFrame:
    """Simulate a labelled fleet; pure and deterministic by seed (no file I/O, no params loading).

    Keyword arguments override the corresponding ``sim`` fields; ``variant`` (>= 0) draws another
    stretch of operation of the SAME fleet (same assets, new load/noise/faults). Returns the canonical frame:
    ``timestamp`` (naive UTC), ``asset``, ``data.sensors`` in order, ``label`` (0/1), ``fault_kind``,
    sorted by asset then timestamp at a fixed ``data.interval_s``.
    """
    seed = sim.seed if seed is None else seed
    n_assets = sim.assets if assets is None else assets
    n_days = sim.days if days is None else days
    _check_arguments(data, scenario, seed, n_assets, n_days)
    t0 = _naive_utc(pd.Timestamp(sim.start) if start is None else pd.Timestamp(start))
    interval = float(data.interval_s)
    n = max(1, int(round(n_days * _S_PER_DAY / interval)))
    if variant < 0:
        raise UsageError(f"variant must be >= 0 (got {variant})")
    streams = _Streams.from_seed(seed, variant)
    drift = scenario == "drift"

    abs_s = t0.value / 1e9 + np.arange(n) * interval  # seconds since the Unix epoch, per reading
    load = _load(sim, n_assets, abs_s, interval, streams, drift)
    clean = _physics(sim, load, abs_s, interval, streams.assets, drift)

    episodes: list[_Episode] = []
    if not drift and sim.anomaly_rate > 0 and sim.faults.kinds:
        episodes = _plan_episodes(sim.faults, sim.anomaly_rate, n_assets, n, interval, streams.faults)
    _apply_process_faults(clean, episodes, interval, streams.faults)

    measured = {s: clean[s] + streams.noise.normal(0.0, sim.noise_sd[s], clean[s].shape) for s in clean}
    if drift:
        measured["pressure"] = sim.drift.pressure_gain * measured["pressure"] + sim.drift.pressure_offset
    _apply_sensor_faults(measured, episodes, data, streams.faults)
    for name in measured:
        spec = data.sensors.get(name)
        if spec is not None:
            measured[name] = np.clip(measured[name], spec.min, spec.max)

    labels, codes = _label_arrays(episodes, n_assets, n)
    names = _asset_names(sim.asset_prefix, n_assets)
    frame = pd.DataFrame(
        {
            TIMESTAMP: np.tile(pd.date_range(t0, periods=n, freq=pd.Timedelta(seconds=interval)).values,
                               n_assets),
            ASSET: np.repeat(np.array(names, dtype=object), n),
            **{s: measured[s].ravel() for s in data.sensor_names},
            LABEL: labels.ravel().astype(np.int64),
            FAULT_KIND: _KIND_BY_CODE[codes.ravel()],
        }
    )
    log.debug("simulated %d rows (%d assets x %d readings, scenario=%s, %d episodes)",
              len(frame), n_assets, n, scenario, len(episodes))
    return frame


def _check_arguments(data: DataConfig, scenario: str, seed: int, assets: int, days: float) -> None:
    """Reject what cannot be simulated with one readable line (the CLI maps it to exit 2)."""
    if scenario not in SCENARIOS:
        raise UsageError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if seed < 0:
        raise UsageError(f"seed must be >= 0 (got {seed})")
    if assets < 1:
        raise UsageError(f"assets must be >= 1 (got {assets})")
    if not days > 0:
        raise UsageError(f"days must be > 0 (got {days})")
    unknown = [s for s in data.sensor_names if s not in SIMULATED_SENSORS]
    if unknown:
        raise UsageError(
            f"the simulator models only {', '.join(SIMULATED_SENSORS)}; "
            f"data.sensors also has {', '.join(unknown)}"
        )


def _naive_utc(ts: pd.Timestamp) -> pd.Timestamp:
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def _asset_names(prefix: str, n_assets: int) -> list[str]:
    width = max(2, len(str(n_assets)))
    return [f"{prefix}-{i + 1:0{width}d}" for i in range(n_assets)]


def _lag(x: np.ndarray, tau_s: float, interval_s: float) -> np.ndarray:
    """First-order lag along time (axis 1), starting in steady state at the first value."""
    a = float(np.exp(-interval_s / tau_s))
    y, _ = lfilter([1.0 - a], [1.0, -a], x, axis=1, zi=a * x[:, :1])
    return y


def _ou_noise(rng: np.random.Generator, shape: tuple[int, int], sd: float, tau_s: float,
              interval_s: float) -> np.ndarray:
    """Stationary Ornstein-Uhlenbeck (AR(1)) noise along axis 1."""
    phi = float(np.exp(-interval_s / tau_s))
    shocks = rng.standard_normal(shape) * sd * np.sqrt(1.0 - phi**2)
    shocks[:, 0] = rng.standard_normal(shape[0]) * sd
    return lfilter([1.0], [1.0, -phi], shocks, axis=1)


def _load(sim: SimulateConfig, n_assets: int, abs_s: np.ndarray, interval: float, streams: _Streams,
          drift: bool) -> np.ndarray:
    """Per-asset load (A, n): shift schedule, weekend factor, smoothing, slow noise, limits."""
    cfg = sim.load
    phase_s = streams.assets.normal(0.0, cfg.asset_phase_sd_min * _S_PER_MIN, (n_assets, 1))
    level_factor = 1.0 + streams.assets.normal(0.0, cfg.asset_level_sd, (n_assets, 1))
    local_s = abs_s[None, :] + phase_s
    hour = (local_s / _S_PER_H) % _H_PER_DAY
    weekday = (np.floor(local_s / _S_PER_DAY).astype(np.int64) + _EPOCH_WEEKDAY) % 7
    starts = np.asarray(cfg.shift_start_h)
    levels = np.asarray(cfg.shift_levels)
    level = levels[np.searchsorted(starts, hour, side="right") - 1]  # -1 wraps to the last shift
    if drift:
        mean = float(levels.mean())
        level = mean + sim.drift.load_swing * (level - mean) + sim.drift.load_offset
    level = level * np.where(np.isin(weekday, _WEEKEND), cfg.weekend_factor, 1.0) * level_factor
    load = _lag(level, cfg.ramp_min * _S_PER_MIN, interval)
    load = load + _ou_noise(streams.load, load.shape, cfg.noise_sd, cfg.noise_tau_min * _S_PER_MIN, interval)
    return np.clip(load, cfg.min, cfg.max)


def _physics(sim: SimulateConfig, load: np.ndarray, abs_s: np.ndarray, interval: float,
             rng: np.random.Generator, drift: bool) -> dict[str, np.ndarray]:
    """Noise-free sensor signals (A, n) of each asset from its load."""
    p = sim.pump
    n_assets = load.shape[0]

    def rated(value: float) -> np.ndarray:
        return value * (1.0 + rng.normal(0.0, p.asset_spread, (n_assets, 1)))

    rpm_r, flow_r = rated(p.rpm_rated), rated(p.flow_rated)
    p_static, p_gain = rated(p.pressure_static), rated(p.pressure_gain)
    i_idle, i_gain = rated(p.current_idle), rated(p.current_gain)
    t_rise, v_base, v_gain = rated(p.temp_rise), rated(p.vib_base), rated(p.vib_gain)
    ambient_offset = rng.normal(0.0, p.ambient_asset_sd_c, (n_assets, 1))

    hour = (abs_s / _S_PER_H) % _H_PER_DAY
    ambient = p.ambient_c + ambient_offset + p.ambient_amplitude_c * np.cos(
        2 * np.pi * (hour[None, :] - p.ambient_peak_h) / _H_PER_DAY
    )
    if drift:
        ambient = ambient + sim.drift.ambient_offset_c
    power = load**3
    signals = {
        "temperature": ambient + _lag(t_rise * power, p.temp_tau_min * _S_PER_MIN, interval),
        "vibration": v_base + v_gain * load**2,
        "pressure": p_static + p_gain * load**2,
        "flow": flow_r * load,
        "current": i_idle + i_gain * power,
        "rpm": rpm_r * load,
    }
    return {s: np.asarray(v, dtype=np.float64) for s, v in signals.items()}


# --- fault planning --------------------------------------------------------------------------------
def _readings(minutes: float, interval: float) -> int:
    return max(1, int(round(minutes * _S_PER_MIN / interval)))


def _min_labelled(kind: FaultKind, faults: FaultsConfig, interval: float) -> int:
    """Fewest labelled rows an episode of ``kind`` can have."""
    if kind == "spikes":
        return int(faults.spikes.count[0])
    return _readings(getattr(faults, kind).minutes[0], interval)


def _draw_episode(kind: FaultKind, faults: FaultsConfig, cap: int, interval: float,
                  rng: np.random.Generator) -> _Episode | None:
    """Size and shape of one episode with at most ``cap`` labelled rows (None if it cannot fit)."""
    if kind == "spikes":
        cfg = faults.spikes
        count = min(int(rng.integers(int(cfg.count[0]), int(cfg.count[1]) + 1)), cap)
        window = max(_readings(rng.uniform(*cfg.window_minutes), interval), _SPIKE_STRIDE * count)
        if count < max(1, int(cfg.count[0])):
            return None
        low, high = cfg.magnitude_sd
        shape = {"magnitude_low": low, "magnitude_high": high, "upward_share": cfg.upward_share}
        return _Episode(kind, -1, -1, window, count, values=shape)
    spec = getattr(faults, kind)
    length = min(_readings(rng.uniform(*spec.minutes), interval), cap)
    if length < max(1, _readings(spec.minutes[0], interval)):
        return None
    values: dict[str, float] = {}
    if kind == "bearing_wear":
        values = {
            "gain": rng.uniform(*spec.vibration_gain),
            "power": spec.power,
            "creep": rng.uniform(*spec.temperature_creep_c),
        }
    elif kind == "overheating":
        values = {
            "excess": rng.uniform(*spec.excess_c),
            "tau_min": spec.tau_min,
            "cool_share": spec.cool_share,
        }
    elif kind == "cavitation":
        values = {
            "drop": rng.uniform(*spec.pressure_drop),
            "noise": rng.uniform(*spec.vibration_noise),
            "wobble": rng.uniform(*spec.flow_wobble),
            "period": rng.uniform(*spec.wobble_period_min),
            "phase": rng.uniform(0.0, 2 * np.pi),
            "current_drop": spec.current_drop,
        }
    return _Episode(kind, -1, -1, length, length, values=values)


def _place(occupied: np.ndarray, length: int, gap: int, rng: np.random.Generator) -> tuple[int, int] | None:
    """A random (asset, start) whose window plus ``gap`` on both sides is still free."""
    n_assets, n = occupied.shape
    if length > n:
        return None
    for _ in range(_PLACEMENT_TRIES):
        asset = int(rng.integers(n_assets))
        start = int(rng.integers(0, n - length + 1))
        if not occupied[asset, max(0, start - gap): start + length + gap].any():
            occupied[asset, start: start + length] = True
            return asset, start
    return None


def _plan_episodes(faults: FaultsConfig, rate: float, n_assets: int, n: int, interval: float,
                   rng: np.random.Generator) -> list[_Episode]:
    """Place episodes round by round (every enabled kind once per round, shuffled) until the
    labelled rows reach ``rate`` of the fleet; each round reserves room for the kinds still to come,
    so a short simulation still gets every kind before any kind repeats (when the budget cannot hold
    one of each, the round falls back to placing whatever fits). Never exceeds the target."""
    target = int(round(rate * n_assets * n))
    gap = _readings(faults.gap_minutes, interval)
    occupied = np.zeros((n_assets, n), dtype=bool)
    occupied[:, :gap] = True  # warm-up: features need history, a stuck sensor needs a last value
    kinds = list(dict.fromkeys(faults.kinds))
    minimum = {k: _min_labelled(k, faults, interval) for k in kinds}
    episodes: list[_Episode] = []
    labelled = 0
    reserve_room = True
    while labelled < target:
        order = [kinds[i] for i in rng.permutation(len(kinds))]
        placed = 0
        for j, kind in enumerate(order):
            reserve = sum(minimum[k] for k in order[j + 1:]) if reserve_room else 0
            cap = target - labelled - reserve
            episode = _draw_episode(kind, faults, cap, interval, rng) if cap > 0 else None
            if episode is None:
                continue
            where = _place(occupied, episode.length, gap, rng)
            if where is None:
                continue
            episode.asset, episode.start = where
            episodes.append(episode)
            labelled += episode.labelled
            placed += 1
        if placed == 0 and not reserve_room:
            break
        # a budget too small for one of each kind: fill it greedily with whatever still fits
        reserve_room = placed > 0
    return episodes


# --- fault application ----------------------------------------------------------------------------
def _apply_process_faults(clean: dict[str, np.ndarray], episodes: Sequence[_Episode], interval: float,
                          rng: np.random.Generator) -> None:
    """Faults of the machine itself, applied to the noise-free signals (in place)."""
    for ep in episodes:
        a, sl, length = ep.asset, slice(ep.start, ep.start + ep.length), ep.length
        v = ep.values
        if ep.kind == "bearing_wear":
            r = np.arange(1, length + 1) / length
            clean["vibration"][a, sl] *= 1.0 + v["gain"] * r ** v["power"]
            clean["temperature"][a, sl] += v["creep"] * r
        elif ep.kind == "overheating":
            clean["temperature"][a, sl] += _overheat_profile(ep, interval)
        elif ep.kind == "cavitation":
            t_min = np.arange(length) * interval / _S_PER_MIN
            wobble = v["wobble"] * (np.sin(2 * np.pi * t_min / v["period"] + v["phase"])
                                    + 0.5 * rng.standard_normal(length))
            clean["pressure"][a, sl] *= 1.0 - v["drop"]
            clean["vibration"][a, sl] *= 1.0 + v["noise"] * np.abs(rng.standard_normal(length))
            clean["flow"][a, sl] *= 1.0 + wobble
            clean["current"][a, sl] *= 1.0 - v["current_drop"]


def _overheat_profile(ep: _Episode, interval: float) -> np.ndarray:
    """Excess temperature: first-order rise towards ``excess``, then a smooth fall back to zero."""
    v = ep.values
    i = np.arange(1, ep.length + 1)
    rise = v["excess"] * (1.0 - np.exp(-i * interval / (v["tau_min"] * _S_PER_MIN)))
    cool = max(1, int(round(ep.length * v["cool_share"])))
    taper = np.ones(ep.length)
    taper[-cool:] = 0.5 * (1.0 + np.cos(np.pi * np.arange(1, cool + 1) / cool))
    return rise * taper


def _apply_sensor_faults(measured: dict[str, np.ndarray], episodes: Sequence[_Episode], data: DataConfig,
                         rng: np.random.Generator) -> None:
    """Faults of the measurement chain, applied to the noisy readings (in place)."""
    sensors = data.sensor_names
    spread = {s: measured[s].std(axis=1) for s in sensors}
    for ep in episodes:
        a = ep.asset
        if ep.kind == "stuck_sensor":
            ep.sensor = sensors[int(rng.integers(len(sensors)))]
            x = measured[ep.sensor]
            x[a, ep.start: ep.start + ep.length] = x[a, ep.start - 1]
        elif ep.kind == "spikes":
            ep.sensor = sensors[int(rng.integers(len(sensors)))]
            spec = data.sensors[ep.sensor]
            x = measured[ep.sensor]
            offsets = rng.choice(np.arange(0, ep.length, _SPIKE_STRIDE), size=ep.labelled, replace=False)
            idx = ep.start + np.sort(offsets)
            height = rng.uniform(ep.values["magnitude_low"], ep.values["magnitude_high"], size=idx.size)
            up = rng.random(idx.size) < ep.values["upward_share"]
            x[a, idx] = _spike_values(x[a, idx], height * spread[ep.sensor][a], up, spec.min, spec.max)
            ep.spike_rows = idx


def _spike_values(value: np.ndarray, height: np.ndarray, up: np.ndarray, low: float | None,
                  high: float | None) -> np.ndarray:
    """Spiked readings that stay inside the physical limits: a spike that would cross a limit goes
    the other way if there is room, otherwise it is shortened to most of the available headroom."""
    room_up = np.full_like(value, np.inf) if high is None else high - value
    room_down = np.full_like(value, np.inf) if low is None else value - low
    up = np.where(up & (height > room_up) & (height <= room_down), False, up)
    up = np.where(~up & (height > room_down) & (height <= room_up), True, up)
    room = np.where(up, room_up, room_down)
    height = np.minimum(height, _SPIKE_HEADROOM * room)
    return np.where(up, value + height, value - height)


def _label_arrays(episodes: Sequence[_Episode], n_assets: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, kind codes), both (A, n): spikes label only their spike rows, others the whole window."""
    labels = np.zeros((n_assets, n), dtype=np.int8)
    codes = np.zeros((n_assets, n), dtype=np.int8)
    for ep in episodes:
        code = FAULT_KINDS.index(ep.kind) + 1
        rows: slice | np.ndarray = slice(ep.start, ep.start + ep.length)
        if ep.spike_rows is not None:
            rows = ep.spike_rows
        labels[ep.asset, rows] = 1
        codes[ep.asset, rows] = code
    return labels, codes


def fault_events(df: pd.DataFrame) -> pd.DataFrame:
    """Contiguous runs of one fault kind per asset (one row per event: asset, fault_kind, start, end,
    rows). Each spike is its own event. Useful for summaries and event-level checks."""
    columns = [ASSET, FAULT_KIND, "start", "end", "rows"]
    faulty = df[FAULT_KIND].to_numpy() != NO_FAULT
    if not faulty.any():
        return pd.DataFrame(columns=columns)
    asset = df[ASSET].to_numpy()
    kind = df[FAULT_KIND].to_numpy()
    boundary = np.r_[True, (asset[1:] != asset[:-1]) | (kind[1:] != kind[:-1]) | (faulty[1:] != faulty[:-1])]
    run = np.cumsum(boundary)
    runs = pd.DataFrame({ASSET: asset, FAULT_KIND: kind, TIMESTAMP: df[TIMESTAMP].to_numpy(), "run": run})
    runs = runs[faulty]
    events = runs.groupby("run", sort=True).agg(
        **{ASSET: (ASSET, "first"), FAULT_KIND: (FAULT_KIND, "first"), "start": (TIMESTAMP, "min"),
           "end": (TIMESTAMP, "max"), "rows": (TIMESTAMP, "size")}
    )
    return events.reset_index(drop=True)[columns]


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """Rows, assets, time span, anomalous share and per-kind rows/events of a simulated frame."""
    events = fault_events(df) if FAULT_KIND in df else pd.DataFrame(columns=[FAULT_KIND, "rows"])
    kinds = {
        str(k): {"rows": int(g["rows"].sum()), "events": int(len(g))}
        for k, g in events.groupby(FAULT_KIND, sort=True)
    }
    return {
        "rows": int(len(df)),
        "assets": int(df[ASSET].nunique()),
        "start": str(df[TIMESTAMP].min()),
        "end": str(df[TIMESTAMP].max()),
        "anomalous_share": float(df[LABEL].mean()) if LABEL in df and len(df) else 0.0,
        "fault_kinds": kinds,
    }


# --------------------------------------------------------------------------------------------------
# Data-quality defects (for validation tests)
# --------------------------------------------------------------------------------------------------
def inject_defects(
    df: pd.DataFrame, data: DataConfig, *, seed: int, config: DefectsConfig | None = None
) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    """Damage a canonical frame with row-level defects; return it and where each defect sits.

    The returned mapping gives, per kind in ``DEFECT_KINDS``, the row POSITIONS (0-based, in the
    returned frame, whose index is reset) that carry that defect; every damaged row carries exactly
    one defect and defects never touch each other or an asset boundary:

    * ``missing``: one sensor of the row is NaN;
    * ``out_of_range``: one sensor lies beyond its physical limit (only sensors that have limits);
    * ``duplicate``: an exact copy of the previous row (same asset and timestamp), i.e. the rows for
      which ``df.duplicated([asset, timestamp], keep="first")`` is true;
    * ``out_of_order``: the row's timestamp is earlier than the previous row's within its asset (two
      neighbouring readings swapped; the reported row is the one that goes back in time).

    Shares of rows come from ``config`` (``simulate.defects``; defaults when omitted); each kind gets
    at least one row when its share is positive and the frame is large enough. Pure: ``df`` is not
    modified.
    """
    cfg = config or DefectsConfig()
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    n = len(df)
    shares = {"missing": cfg.missing, "duplicate": cfg.duplicate, "out_of_order": cfg.out_of_order,
              "out_of_range": cfg.out_of_range}
    limited = [s for s, spec in data.sensors.items() if spec.min is not None or spec.max is not None]
    if not limited:
        shares["out_of_range"] = 0.0
    blocks = _defect_blocks(df[ASSET].to_numpy() if ASSET in df else np.zeros(n))
    wanted = {k: (max(1, int(round(share * n))) if share > 0 else 0) for k, share in shares.items()}
    if sum(wanted.values()) > len(blocks):
        raise UsageError(f"frame too small for the requested defects ({n} rows)")
    chosen = rng.permutation(blocks)[: sum(wanted.values())] * _DEFECT_BLOCK + _DEFECT_BLOCK // 2
    picked: dict[str, np.ndarray] = {}
    offset = 0
    for kind in DEFECT_KINDS:
        picked[kind] = np.sort(chosen[offset: offset + wanted[kind]])
        offset += wanted[kind]

    order = np.arange(n)
    swap = picked["out_of_order"]
    order[swap], order[swap + 1] = swap + 1, swap  # the earlier reading now comes second
    repeats = np.ones(n, dtype=np.int64)
    repeats[picked["duplicate"]] = 2
    source = np.repeat(order, repeats)
    out = df.iloc[source].reset_index(drop=True)

    is_copy = np.r_[False, source[1:] == source[:-1]]
    goes_back = np.r_[False, source[1:] < source[:-1]]
    pos_missing = np.flatnonzero(np.isin(source, picked["missing"]) & ~is_copy)
    pos_range = np.flatnonzero(np.isin(source, picked["out_of_range"]) & ~is_copy)
    sensors = data.sensor_names
    for pos in pos_missing:
        out.iat[pos, out.columns.get_loc(sensors[int(rng.integers(len(sensors)))])] = np.nan
    for pos in pos_range:
        name = limited[int(rng.integers(len(limited)))]
        out.iat[pos, out.columns.get_loc(name)] = _beyond_limit(data, name, cfg, rng)
    positions = {
        "missing": pos_missing,
        "duplicate": np.flatnonzero(is_copy),
        "out_of_order": np.flatnonzero(goes_back),
        "out_of_range": pos_range,
    }
    return out, {k: [int(p) for p in v] for k, v in positions.items()}


def _defect_blocks(asset: np.ndarray) -> np.ndarray:
    """Indices of ``_DEFECT_BLOCK``-row blocks that lie inside one asset (not its first block)."""
    n_blocks = len(asset) // _DEFECT_BLOCK
    if n_blocks == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(n_blocks) * _DEFECT_BLOCK
    same = asset[starts] == asset[starts + _DEFECT_BLOCK - 1]
    first_of_asset = np.r_[True, asset[starts[1:]] != asset[starts[1:] - 1]]
    return np.flatnonzero(same & ~first_of_asset)


def _beyond_limit(data: DataConfig, name: str, cfg: DefectsConfig, rng: np.random.Generator) -> float:
    """A reading outside the sensor's physical limits by a share of its limit span."""
    spec = data.sensors[name]
    span = (spec.max - spec.min) if spec.min is not None and spec.max is not None else 1.0
    margin = rng.uniform(*cfg.out_of_range_margin) * span
    go_up = spec.max is not None and (spec.min is None or rng.random() < _UPPER_SHARE)
    return float(spec.max + margin) if go_up else float(spec.min - margin)  # type: ignore[operator]


def drop_column(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Batch-level defect: a required column is missing (the whole batch must be refused)."""
    if column not in df:
        raise KeyError(f"column {column!r} not in frame")
    return df.drop(columns=[column])


def with_wrong_types(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Batch-level defect: a numeric column exported with a decimal comma (a European-locale
    spreadsheet), so it arrives as text, also after a CSV round trip; NaN stays empty."""
    if column not in df:
        raise KeyError(f"column {column!r} not in frame")
    values = df[column].to_numpy(dtype=np.float64)
    text = np.array([("" if np.isnan(v) else f"{v:.3f}".replace(".", ",")) for v in values], dtype=object)
    return df.assign(**{column: text})


# --------------------------------------------------------------------------------------------------
# I/O shell
# --------------------------------------------------------------------------------------------------
def output_format(path: Path | str) -> str:
    """``csv`` or ``parquet`` from the file suffix; anything else is a ``UsageError``."""
    name = Path(path).name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return SUFFIXES[suffix]
    raise UsageError(f"{path}: unsupported output suffix; use one of {', '.join(SUFFIXES)}")


def write_frame(df: pd.DataFrame, path: Path | str) -> Path:
    """Write a frame as CSV (``.csv``, gzip for ``.csv.gz``) or Parquet by suffix; make parents."""
    path = Path(path)
    fmt = output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writers: dict[str, Callable[[], None]] = {
        "csv": lambda: df.to_csv(path, index=False),
        "parquet": lambda: df.to_parquet(path, index=False),
    }
    writers[fmt]()
    return path


def defects_sidecar(path: Path | str) -> Path:
    """Where ``plantwatch simulate --defects`` records the defect rows: ``<out>.defects.json``."""
    path = Path(path)
    return path.with_name(path.name + ".defects.json")


def write_defects_sidecar(path: Path | str, defects: dict[str, list[int]], *, seed: int, rows: int) -> Path:
    """Write the defect row positions next to the data file they describe."""
    target = defects_sidecar(path)
    payload = {"data": Path(path).name, "seed": seed, "rows": rows, "defects": defects}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload) + "\n")
    return target
