"""The fleet simulator: canonical, deterministic, realistic (coupled physics, learnable faults),
a detectable drift scenario, defects at exactly the reported rows, and the ``simulate`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp
from typer.testing import CliRunner

from plantwatch.cli import app
from plantwatch.config import Params, parse_params
from plantwatch.config.simulate import FAULT_KINDS
from plantwatch.errors import ConfigError, UsageError
from plantwatch.schema import ASSET, FAULT_KIND, LABEL, TIMESTAMP
from plantwatch.simulate import (
    DEFECT_KINDS,
    NO_FAULT,
    drop_column,
    fault_events,
    inject_defects,
    simulate_fleet,
    summarize,
    with_wrong_types,
)

WEEK = 7.0


@pytest.fixture(scope="module")
def week(sim_params: Params) -> pd.DataFrame:
    """Default settings over a week (the issue's 'every fault kind present' condition)."""
    return simulate_fleet(sim_params.simulate, sim_params.data, days=WEEK)


@pytest.fixture(scope="module")
def defected(small_fleet: pd.DataFrame, sim_params: Params) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    return inject_defects(small_fleet, sim_params.data, seed=3, config=sim_params.simulate.defects)


def _sensors(p: Params) -> list[str]:
    return p.data.sensor_names


def _per_asset_lag_corr(x: np.ndarray, y: np.ndarray, lag: int) -> float:
    """corr(x[t - lag], y[t])."""
    return float(np.corrcoef(x[: len(x) - lag], y[lag:])[0, 1]) if lag else float(np.corrcoef(x, y)[0, 1])


# --- canonical frame + determinism ----------------------------------------------------------------
def test_canonical_frame(small_fleet: pd.DataFrame, sim_params: Params) -> None:
    df = small_fleet
    sensors = _sensors(sim_params)
    assert list(df.columns) == [TIMESTAMP, ASSET, *sensors, LABEL, FAULT_KIND]
    assert df[TIMESTAMP].dtype == np.dtype("datetime64[ns]")
    assert all(df[s].dtype == np.float64 for s in sensors)
    assert df[LABEL].dtype == np.int64 and set(df[LABEL].unique()) == {0, 1}
    assert sorted(df[ASSET].unique()) == [f"pump-{i:02d}" for i in range(1, 7)]
    assert df[ASSET].map(type).eq(str).all() and df[FAULT_KIND].map(type).eq(str).all()
    assert len(df) == 6 * 3 * 24 * 60
    assert df.equals(df.sort_values([ASSET, TIMESTAMP], kind="stable"))
    steps = df.groupby(ASSET)[TIMESTAMP].diff().dropna().unique()
    assert list(steps) == [pd.Timedelta(seconds=sim_params.data.interval_s)]
    assert df[TIMESTAMP].min() == pd.Timestamp("2024-01-01")
    assert not df[sensors].isna().any().any()
    # label and fault_kind tell the same story
    assert ((df[LABEL] == 1) == (df[FAULT_KIND] != NO_FAULT)).all()


def test_same_seed_same_frame_other_seed_differs(small_fleet: pd.DataFrame, sim_params: Params) -> None:
    again = simulate_fleet(sim_params.simulate, sim_params.data, assets=6, days=3.0)
    pd.testing.assert_frame_equal(again, small_fleet)
    other = simulate_fleet(sim_params.simulate, sim_params.data, assets=6, days=3.0, seed=43)
    sensors = _sensors(sim_params)
    assert not np.allclose(other[sensors].to_numpy(), small_fleet[sensors].to_numpy())
    assert not other[LABEL].equals(small_fleet[LABEL])  # fault episodes land elsewhere too


def test_overrides_and_start(sim_params: Params) -> None:
    df = simulate_fleet(
        sim_params.simulate, sim_params.data, assets=2, days=0.5,
        start=pd.Timestamp("2024-03-01T06:00:00+01:00"),
    )
    assert df[ASSET].unique().tolist() == ["pump-01", "pump-02"]
    assert len(df) == 2 * 12 * 60
    assert df[TIMESTAMP].iloc[0] == pd.Timestamp("2024-03-01 05:00:00")  # aware -> naive UTC
    assert df[TIMESTAMP].dt.tz is None


def test_sensor_subset_follows_data_sensors(sim_params: Params) -> None:
    data = sim_params.data.model_copy(
        update={"sensors": {k: sim_params.data.sensors[k] for k in ("rpm", "temperature")}}
    )
    df = simulate_fleet(sim_params.simulate, data, assets=1, days=0.5)
    assert list(df.columns) == [TIMESTAMP, ASSET, "rpm", "temperature", LABEL, FAULT_KIND]


def test_bad_arguments_are_usage_errors(sim_params: Params) -> None:
    sim, data = sim_params.simulate, sim_params.data
    with pytest.raises(UsageError, match="assets"):
        simulate_fleet(sim, data, assets=0)
    with pytest.raises(UsageError, match="days"):
        simulate_fleet(sim, data, days=0)
    with pytest.raises(UsageError, match="scenario"):
        simulate_fleet(sim, data, scenario="storm")  # type: ignore[arg-type]
    unknown = data.model_copy(update={"sensors": {**data.sensors, "humidity": data.sensors["flow"]}})
    with pytest.raises(UsageError, match="humidity"):
        simulate_fleet(sim, unknown, days=0.1)


def test_config_rejects_reversed_range(repo_root: Path) -> None:
    import yaml

    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["simulate"]["faults"]["cavitation"] = {"minutes": [60, 20]}
    with pytest.raises(ConfigError, match=r"simulate\.faults\.cavitation\.minutes"):
        parse_params(raw)


# --- labels and fault episodes ---------------------------------------------------------------------
def test_label_rate_within_band(small_fleet: pd.DataFrame, week: pd.DataFrame, sim_params: Params) -> None:
    target = sim_params.simulate.anomaly_rate
    for df in (small_fleet, week):
        assert 0.01 <= df[LABEL].mean() <= 0.03
        assert df[LABEL].mean() == pytest.approx(target, rel=0.1)
    # the rate follows the config, and 0 means a clean fleet
    sim = sim_params.simulate
    high = simulate_fleet(sim.model_copy(update={"anomaly_rate": 0.05}), sim_params.data, days=WEEK)
    assert high[LABEL].mean() == pytest.approx(0.05, rel=0.1)
    none = simulate_fleet(sim.model_copy(update={"anomaly_rate": 0.0}), sim_params.data, days=1)
    assert none[LABEL].sum() == 0 and (none[FAULT_KIND] == NO_FAULT).all()
    # a budget too small for one episode of each kind is still filled (with the kinds that fit)
    tiny = simulate_fleet(sim, sim_params.data, assets=1, days=1)
    assert 0.01 <= tiny[LABEL].mean() and tiny[LABEL].sum() <= round(target * len(tiny))


def test_every_fault_kind_present(week: pd.DataFrame, small_fleet: pd.DataFrame) -> None:
    for df in (week, small_fleet):
        assert set(df[FAULT_KIND].unique()) == {NO_FAULT, *FAULT_KINDS}
    events = fault_events(week)
    assert set(events[FAULT_KIND]) == set(FAULT_KINDS)
    # spikes are single readings, every other kind is an episode of many consecutive readings
    spikes = events[events[FAULT_KIND] == "spikes"]
    assert (spikes["rows"] == 1).all() and len(spikes) >= 4
    assert (events.loc[events[FAULT_KIND] != "spikes", "rows"] >= 20).all()


def test_rows_within_physical_limits(week: pd.DataFrame, sim_params: Params) -> None:
    for name, spec in sim_params.data.sensors.items():
        values = week[name]
        assert values.between(spec.min, spec.max).all(), name
        normal = values[week[LABEL] == 0]
        # normal readings are nowhere near the limits (nothing is clipped into range)
        margin = 0.02 * (spec.max - spec.min)
        assert normal.min() > spec.min + margin and normal.max() < spec.max - margin, name


def test_stuck_sensor_flatlines_at_last_value(week: pd.DataFrame, sim_params: Params) -> None:
    sensors = _sensors(sim_params)
    for _, ev in fault_events(week).query("fault_kind == 'stuck_sensor'").iterrows():
        rows = week[(week[ASSET] == ev[ASSET]) & week[TIMESTAMP].between(ev["start"], ev["end"])]
        before = week[(week[ASSET] == ev[ASSET]) & (week[TIMESTAMP] == ev["start"] - pd.Timedelta(minutes=1))]
        flat = [s for s in sensors if rows[s].nunique() == 1]
        assert len(flat) == 1
        assert rows[flat[0]].iloc[0] == before[flat[0]].iloc[0]
        # subtle: the frozen value is an ordinary reading of that asset
        asset_values = week.loc[week[ASSET] == ev[ASSET], flat[0]]
        assert asset_values.quantile(0.01) < rows[flat[0]].iloc[0] < asset_values.quantile(0.99)
    # no normal row ever repeats the previous reading exactly (so 'stuck' is unambiguous)
    normal = week[week[LABEL] == 0]
    for s in sensors:
        assert (normal.groupby(ASSET)[s].diff() == 0).sum() == 0


def _residual_vs_load(df: pd.DataFrame, sensor: str) -> pd.Series:
    """Per-asset residual of a sensor against a cubic in rpm (the load), fitted on normal rows."""
    out = pd.Series(np.nan, index=df.index)
    for _, g in df.groupby(ASSET):
        load = g["rpm"].to_numpy() / g["rpm"].max()
        design = np.vander(load, 4)
        ok = g[LABEL].to_numpy() == 0
        coef, *_ = np.linalg.lstsq(design[ok], g[sensor].to_numpy()[ok], rcond=None)
        out[g.index] = g[sensor].to_numpy() - design @ coef
    return out


def test_faults_break_relationships(week: pd.DataFrame) -> None:
    """Cavitation and bearing wear show up as residuals against load, overheating as excess heat."""
    kinds = week[FAULT_KIND]
    normal = kinds == NO_FAULT
    pressure_res = _residual_vs_load(week, "pressure")
    assert pressure_res[kinds == "cavitation"].mean() < -3 * pressure_res[normal].std()
    vib_res = _residual_vs_load(week, "vibration")
    for _, ev in fault_events(week).query("fault_kind == 'bearing_wear'").iterrows():
        rows = vib_res[(week[ASSET] == ev[ASSET]) & week[TIMESTAMP].between(ev["start"], ev["end"])]
        quarter = len(rows) // 4
        assert rows.iloc[-quarter:].mean() > rows.iloc[:quarter].mean() + 2 * vib_res[normal].std()
    hot = week[kinds == "overheating"]
    assert (hot["temperature"] - _expected_temperature(week)[hot.index]).mean() > 5.0


def _expected_temperature(df: pd.DataFrame) -> pd.Series:
    """Temperature explained by recent current (an hour's mean), fitted per asset on normal rows."""
    out = pd.Series(np.nan, index=df.index)
    for _, g in df.groupby(ASSET):
        recent = g["current"].rolling(60, min_periods=1).mean().to_numpy()
        design = np.c_[np.ones_like(recent), recent]
        ok = g[LABEL].to_numpy() == 0
        coef, *_ = np.linalg.lstsq(design[ok], g["temperature"].to_numpy()[ok], rcond=None)
        out[g.index] = design @ coef
    return out


# --- physics -----------------------------------------------------------------------------------------
def test_sensors_are_coupled_and_temperature_lags(small_fleet: pd.DataFrame) -> None:
    normal = small_fleet[small_fleet[LABEL] == 0]
    for _, g in normal.groupby(ASSET):
        assert g["current"].corr(g["flow"]) > 0.9
        assert g["flow"].corr(g["rpm"]) > 0.95
        assert g["pressure"].corr(g["rpm"]) > 0.9
    lags = np.arange(0, 181, 5)
    for _, g in small_fleet.groupby(ASSET):
        current, temp = g["current"].to_numpy(), g["temperature"].to_numpy()
        corr = [_per_asset_lag_corr(current, temp, int(lag)) for lag in lags]
        best = lags[int(np.argmax(corr))]
        assert 10 <= best <= 120, best  # temperature follows load with a thermal lag, not instantly
        assert max(corr) > _per_asset_lag_corr(current, temp, 0) + 0.02


def test_assets_differ_and_load_has_daily_cycle(small_fleet: pd.DataFrame) -> None:
    normal = small_fleet[small_fleet[LABEL] == 0]
    per_asset_flow_max = normal.groupby(ASSET)["flow"].quantile(0.95)
    assert per_asset_flow_max.max() / per_asset_flow_max.min() > 1.03
    hourly = normal.groupby(normal[TIMESTAMP].dt.hour)["rpm"].mean()
    assert hourly.loc[8:12].mean() > 1.5 * hourly.loc[[0, 1, 2, 3, 4]].mean()  # day shift vs night


# --- drift scenario ----------------------------------------------------------------------------------
def _batch_flagged(batch: pd.DataFrame, ref: pd.DataFrame, sensors: list[str]) -> bool:
    """A plain drift test: KS per sensor, Bonferroni-corrected, drifted if any sensor moved."""
    return any(ks_2samp(batch[s], ref[s]).pvalue < 0.01 / len(sensors) for s in sensors)


def test_drift_scenario(sim_params: Params) -> None:
    sim, data, sensors = sim_params.simulate, sim_params.data, _sensors(sim_params)
    ref = simulate_fleet(sim, data, days=4, seed=1)
    later = pd.Timestamp("2024-02-01")
    same = simulate_fleet(sim, data, days=2, seed=2, start=later)
    drift = simulate_fleet(sim, data, days=2, seed=2, start=later, scenario="drift")
    assert drift[LABEL].sum() == 0 and (drift[FAULT_KIND] == NO_FAULT).all()
    assert drift[TIMESTAMP].equals(same[TIMESTAMP]) and drift[ASSET].equals(same[ASSET])
    for s in ("flow", "current", "rpm", "temperature", "pressure"):
        assert abs(drift[s].mean() - ref[s].mean()) > 0.5 * ref[s].std(), s
    # pressure recalibration: at the same speed the transmitter now reads higher than before
    for asset, g in same.groupby(ASSET):
        d = drift[drift[ASSET] == asset]
        coef = np.polyfit(g["rpm"], g["pressure"], 2)
        assert (d["pressure"] - np.polyval(coef, d["rpm"])).median() > 0.5 * sim.drift.pressure_offset
    for name, spec in data.sensors.items():
        assert drift[name].between(spec.min, spec.max).all()

    rng = np.random.default_rng(0)
    size, n_batches = 300, 40
    starts = rng.integers(0, len(drift) - size, n_batches)
    contiguous = [_batch_flagged(drift.iloc[s: s + size], ref, sensors) for s in starts]
    sampled = [_batch_flagged(drift.sample(size, random_state=i), ref, sensors) for i in range(n_batches)]
    assert np.mean(contiguous) >= 0.95 and np.mean(sampled) >= 0.95
    # batches from the same distribution that cover the daily cycle look alike
    alike = [_batch_flagged(same.sample(size, random_state=i), ref, sensors) for i in range(n_batches)]
    assert np.mean(alike) <= 0.1


# --- defects -------------------------------------------------------------------------------------------
def test_defects_at_reported_rows(defected: tuple[pd.DataFrame, dict[str, list[int]]],
                                  small_fleet: pd.DataFrame, sim_params: Params) -> None:
    out, rows = defected
    data, sensors = sim_params.data, _sensors(sim_params)
    assert set(rows) == set(DEFECT_KINDS)
    assert all(rows[k] for k in DEFECT_KINDS)
    assert out.index.equals(pd.RangeIndex(len(out)))
    assert len(out) == len(small_fleet) + len(rows["duplicate"])

    def at(mask: pd.Series | np.ndarray) -> list[int]:
        return np.flatnonzero(np.asarray(mask)).tolist()

    assert at(out[sensors].isna().any(axis=1)) == rows["missing"]
    assert at(out.duplicated([ASSET, TIMESTAMP], keep="first")) == rows["duplicate"]
    assert at(out.groupby(ASSET, sort=False)[TIMESTAMP].diff() < pd.Timedelta(0)) == rows["out_of_order"]
    beyond = np.zeros(len(out), dtype=bool)
    for name, spec in data.sensors.items():
        beyond |= ((out[name] < spec.min) | (out[name] > spec.max)).to_numpy()
    assert at(beyond) == rows["out_of_range"]
    # one defect per row, a small share of the batch, sizes as configured
    flat = [p for k in DEFECT_KINDS for p in rows[k]]
    assert len(flat) == len(set(flat))
    assert 0.01 <= len(flat) / len(out) <= 0.02
    cfg = sim_params.simulate.defects
    assert len(rows["missing"]) == round(cfg.missing * len(small_fleet))
    # the untouched rows are the original ones, and the input frame is not modified
    assert small_fleet[sensors].notna().all().all()
    kept = out.drop(index=flat).drop_duplicates([ASSET, TIMESTAMP]).sort_values([ASSET, TIMESTAMP])
    original = small_fleet.set_index([ASSET, TIMESTAMP]).loc[kept.set_index([ASSET, TIMESTAMP]).index]
    np.testing.assert_array_equal(kept[sensors].to_numpy(), original[sensors].to_numpy())


def test_defects_deterministic_by_seed(small_fleet: pd.DataFrame, sim_params: Params,
                                       defected: tuple[pd.DataFrame, dict[str, list[int]]]) -> None:
    again, rows = inject_defects(small_fleet, sim_params.data, seed=3, config=sim_params.simulate.defects)
    pd.testing.assert_frame_equal(again, defected[0])
    assert rows == defected[1]
    _, other = inject_defects(small_fleet, sim_params.data, seed=4, config=sim_params.simulate.defects)
    assert other != rows


def test_batch_level_defect_helpers(small_fleet: pd.DataFrame, tmp_path: Path) -> None:
    head = small_fleet.head(50)
    assert "pressure" not in drop_column(head, "pressure")
    with pytest.raises(KeyError):
        drop_column(head, "humidity")
    broken = with_wrong_types(head, "pressure")
    path = tmp_path / "broken.csv"
    broken.to_csv(path, index=False)
    back = pd.read_csv(path)
    assert back["pressure"].dtype == object
    assert pd.to_numeric(back["pressure"], errors="coerce").isna().all()
    assert back["flow"].dtype == np.float64  # only the chosen column is damaged


# --- CLI -----------------------------------------------------------------------------------------------
def _invoke(*args: str):  # noqa: ANN202 - typer Result
    return CliRunner().invoke(app, ["simulate", *args])


@pytest.mark.parametrize("name", ["fleet.csv", "fleet.csv.gz", "fleet.parquet"])
def test_cli_writes_frame(project: Path, sim_params: Params, name: str) -> None:
    result = _invoke("--out", f"out/{name}", "--seed", "7", "--assets", "2", "--days", "1")
    assert result.exit_code == 0, result.output
    path = project / "out" / name
    back = pd.read_parquet(path) if name.endswith(".parquet") else pd.read_csv(path, parse_dates=[TIMESTAMP])
    expected = simulate_fleet(sim_params.simulate, sim_params.data, seed=7, assets=2, days=1)
    pd.testing.assert_frame_equal(back, expected, check_exact=False, rtol=1e-12)
    assert "2,880 rows" in result.output and "2 assets" in result.output


def test_cli_defects_sidecar(project: Path, sim_params: Params) -> None:
    result = _invoke("--out", "fleet.parquet", "--assets", "2", "--days", "1", "--defects")
    assert result.exit_code == 0, result.output
    sidecar = json.loads((project / "fleet.parquet.defects.json").read_text())
    back = pd.read_parquet(project / "fleet.parquet")
    assert sidecar["rows"] == len(back) and sidecar["seed"] == sim_params.simulate.seed
    missing = np.flatnonzero(back[_sensors(sim_params)].isna().any(axis=1)).tolist()
    assert sidecar["defects"]["missing"] == missing
    assert set(sidecar["defects"]) == set(DEFECT_KINDS)


def test_cli_drift_defaults_from_params(project: Path) -> None:
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("  assets: 6\n", "  assets: 3\n", 1))
    result = _invoke("--out", "drift.parquet", "--days", "0.5", "--scenario", "drift", "--json")
    assert result.exit_code == 0, result.output
    back = pd.read_parquet(project / "drift.parquet")
    assert back[ASSET].nunique() == 3 and back[LABEL].sum() == 0
    summary = json.loads(result.stdout)
    assert summary["rows"] == len(back) and summary["assets"] == 3 and summary["scenario"] == "drift"
    assert summary["anomalous_share"] == 0.0 and summary["fault_kinds"] == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "fleet.txt"], "unsupported output suffix"),
        (["--out", "fleet.parquet", "--scenario", "storm"], "--scenario must be one of"),
        (["--out", "fleet.parquet", "--assets", "0"], "assets must be >= 1"),
        (["--out", "fleet.parquet", "--days", "-1"], "days must be > 0"),
    ],
)
def test_cli_rejects_bad_input(project: Path, args: list[str], message: str) -> None:
    result = _invoke(*args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not list(project.glob("fleet*"))


def test_summary(small_fleet: pd.DataFrame) -> None:
    s = summarize(small_fleet)
    assert s["rows"] == len(small_fleet) and s["assets"] == 6
    assert s["anomalous_share"] == pytest.approx(small_fleet[LABEL].mean())
    assert set(s["fault_kinds"]) == set(FAULT_KINDS)
    assert sum(k["rows"] for k in s["fault_kinds"].values()) == small_fleet[LABEL].sum()


def test_variant_keeps_the_fleet_but_draws_a_new_stretch(sim_params) -> None:
    """Another day of the same plant: same per-asset operating levels, different noise."""
    from plantwatch.simulate import simulate_fleet

    base = simulate_fleet(sim_params.simulate, sim_params.data, days=2, assets=3)
    other = simulate_fleet(sim_params.simulate, sim_params.data, days=2, assets=3, variant=1)
    stranger = simulate_fleet(sim_params.simulate, sim_params.data, days=2, assets=3, seed=999)
    assert not base["flow"].equals(other["flow"])
    level = base.groupby("asset")["flow"].median()
    assert (other.groupby("asset")["flow"].median() - level).abs().max() < (
        stranger.groupby("asset")["flow"].median() - level
    ).abs().max()
