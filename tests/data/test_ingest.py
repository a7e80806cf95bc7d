"""Ingest: the pure normalise core, the source/landing shell and `plantwatch ingest`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from plantwatch import schema
from plantwatch.config import DataConfig, Params, load_params, parse_params
from plantwatch.errors import DataError
from plantwatch.ingest import LANDING_MANIFEST, TYPE_ERRORS, ingest, normalise, resolve_sources
from plantwatch.paths import ProjectPaths

SENSORS = ["temperature", "vibration", "pressure", "flow", "current", "rpm"]


def _raw(n: int = 6, assets: tuple[str, ...] = ("b", "a")) -> pd.DataFrame:
    """A raw single-interval frame as a user would export it (ISO strings, unsorted assets)."""
    rows = []
    for asset in assets:
        for i in range(n):
            rows.append(
                {
                    "timestamp": (pd.Timestamp("2024-01-01") + pd.Timedelta(minutes=i)).isoformat(),
                    "asset": asset,
                    **{s: float(i + 1) for s in SENSORS},
                    "label": 0,
                    "fault_kind": "none",
                    "operator_note": "ignored",
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def data(repo_root: Path) -> DataConfig:
    return load_params(repo_root / "params.yaml").data


def test_normalise_gives_the_canonical_frame(data: DataConfig) -> None:
    raw = _raw()
    out = normalise(raw, data)
    assert len(out) == len(raw)
    assert list(out.columns) == [
        schema.TIMESTAMP,
        schema.ASSET,
        *SENSORS,
        schema.LABEL,
        "fault_kind",
        TYPE_ERRORS,
    ]
    assert str(out[schema.TIMESTAMP].dtype) == "datetime64[ns]"
    assert all(str(out[s].dtype) == "float64" for s in SENSORS)
    assert out[schema.LABEL].dtype == np.int64
    # sorted by (asset, timestamp): asset "a" first although the source listed "b" first
    assert out[schema.ASSET].tolist() == ["a"] * 6 + ["b"] * 6
    assert out.groupby(schema.ASSET)[schema.TIMESTAMP].apply(lambda t: t.is_monotonic_increasing).all()
    assert out[TYPE_ERRORS].isna().all()


def test_timestamps_become_naive_utc(data: DataConfig) -> None:
    raw = _raw(n=2, assets=("a",))
    raw["timestamp"] = ["2024-01-01T01:00:00+01:00", "2024-01-01T00:01:00Z"]
    out = normalise(raw, data)
    assert out[schema.TIMESTAMP].tolist() == [
        pd.Timestamp("2024-01-01 00:00"),
        pd.Timestamp("2024-01-01 00:01"),
    ]
    assert out[schema.TIMESTAMP].dt.tz is None


def test_single_asset_source_gets_default_asset(data: DataConfig) -> None:
    single = data.model_copy(update={"asset_column": None, "default_asset": "machine-7"})
    out = normalise(_raw(n=3, assets=("x",)).drop(columns=["asset"]), single)
    assert out[schema.ASSET].tolist() == ["machine-7"] * 3


def test_non_numbers_become_nan_and_are_recorded_not_lost(data: DataConfig) -> None:
    raw = _raw(n=5, assets=("a",))
    raw["pressure"] = ["1.5", "12,5", "", "NaN", "abc"]  # decimal comma and text are type errors
    raw.loc[4, "timestamp"] = "yesterday-ish"
    out = normalise(raw, data)
    assert out["pressure"].dtype == np.float64
    by_value = dict(zip(out["pressure"].fillna(-1).tolist(), out[TYPE_ERRORS].tolist(), strict=True))
    assert by_value[1.5] is None
    markers = out[TYPE_ERRORS].dropna().tolist()
    assert "pressure='12,5'" in markers
    # row 4 carries both its bad timestamp and its bad pressure
    assert "timestamp='yesterday-ish'; pressure='abc'" in markers
    # empty / "NaN" are missing readings, not type errors
    assert len(markers) == 2
    assert out[schema.TIMESTAMP].isna().sum() == 1


def test_missing_required_column_is_one_line_data_error(data: DataConfig) -> None:
    with pytest.raises(DataError, match=r"^missing required column\(s\): rpm$"):
        normalise(_raw().drop(columns=["rpm"]), data)


def test_label_and_passthrough_are_optional(data: DataConfig) -> None:
    out = normalise(_raw().drop(columns=["label", "fault_kind"]), data)
    assert schema.LABEL not in out and "fault_kind" not in out


# --- I/O shell ------------------------------------------------------------------------------------


def _params_with(project: Path, **data_updates: object) -> Params:
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["data"].update(data_updates)
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    return parse_params(raw)


def test_reads_csv_csv_gz_parquet_and_globs(project: Path) -> None:
    raw = _raw(n=4)
    (project / "in").mkdir()
    raw[raw.asset == "a"].to_csv(project / "in" / "a.csv", index=False)
    raw[raw.asset == "b"].to_csv(project / "in" / "b.csv.gz", index=False)
    raw.assign(asset="c").to_parquet(project / "in" / "c.parquet", index=False)
    params = _params_with(project, sources=["in/*.csv*", "in/c.parquet"])
    frame, summary = ingest(params.data, ProjectPaths.at(project))
    assert summary.rows == {"in/a.csv": 4, "in/b.csv.gz": 4, "in/c.parquet": 8}
    assert len(frame) == 16 and sorted(frame[schema.ASSET].unique()) == ["a", "b", "c"]
    written = pd.read_parquet(project / "data" / "interim" / "telemetry.parquet")
    pd.testing.assert_frame_equal(written, frame)


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        (["nope.parquet"], r"^source file not found: nope\.parquet$"),
        (["in/*.csv"], r"^source pattern matches no file: in/\*\.csv$"),
        (["notes.txt"], r"^unsupported source type"),
    ],
)
def test_bad_sources_are_one_line_errors(project: Path, sources: list[str], message: str) -> None:
    (project / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=message):
        resolve_sources(sources, ProjectPaths.at(project))


def test_landing_files_are_ingested_once_even_when_replayed(project: Path) -> None:
    raw = _raw(n=4)
    (project / "data" / "raw").mkdir(parents=True)
    raw[raw.asset == "a"].to_parquet(project / "data" / "raw" / "telemetry.parquet", index=False)
    landing = project / "data" / "landing"
    landing.mkdir(parents=True)
    raw[raw.asset == "b"].to_csv(landing / "2024-01-02.csv", index=False)
    params = load_params(project / "params.yaml")
    paths = ProjectPaths.at(project)

    first, summary = ingest(params.data, paths)
    assert len(first) == 8 and summary.skipped_replays == {}

    # the same delivery again, under a name that sorts first: skipped, the original keeps ownership
    shutil.copy(landing / "2024-01-02.csv", landing / "0-resent.csv")
    second, summary = ingest(params.data, paths)
    assert len(second) == 8
    assert summary.skipped_replays == {"data/landing/0-resent.csv": "2024-01-02.csv"}
    manifest = json.loads((project / "data" / "interim" / LANDING_MANIFEST).read_text())
    assert [e["file"] for e in manifest["files"]] == ["2024-01-02.csv"]

    # re-running ingest (a replay of the whole stage) never appends: interim is rebuilt
    third, _ = ingest(params.data, paths)
    pd.testing.assert_frame_equal(third, second)


def test_cli_ingest_prints_rows_per_source(project: Path) -> None:
    from plantwatch.cli import app

    (project / "data" / "raw").mkdir(parents=True)
    _raw(n=5).to_parquet(project / "data" / "raw" / "telemetry.parquet", index=False)
    result = CliRunner().invoke(app, ["ingest", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"] == {"data/raw/telemetry.parquet": 10}
    assert summary["output"] == "data/interim/telemetry.parquet"


def test_cli_ingest_missing_source_is_one_line_exit_1(project: Path) -> None:
    from plantwatch.cli import app

    result = CliRunner().invoke(app, ["ingest"])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines == ["error: source file not found: data/raw/telemetry.parquet"]


def test_smd_dataset_ingests_by_params_only(repo_root: Path, datasets_dir: Path, project: Path) -> None:
    params = load_params(repo_root / "params" / "smd.yaml")
    # params/smd.yaml points at ../shared/datasets relative to the repo; the test project lives elsewhere
    data = params.data.model_copy(update={"sources": [str(datasets_dir / "smd_machine-2-1.csv.gz")]})
    frame, summary = ingest(data, ProjectPaths.at(project))
    meta = json.loads((datasets_dir / "smd_machine-2-1.meta.json").read_text())
    assert len(frame) == meta["rows"] == sum(summary.rows.values())
    assert data.sensor_names == meta["sensor_columns"] and data.train_rows == meta["n_train_rows"]
    assert (frame[schema.ASSET] == "machine-2-1").all()
    assert frame[data.sensor_names].dtypes.eq("float64").all()
    assert frame[TYPE_ERRORS].isna().all()
    # min-max scaled data lies inside the limits params/smd.yaml declares
    lows = np.array([data.sensors[s].min for s in data.sensor_names])
    highs = np.array([data.sensors[s].max for s in data.sensor_names])
    values = frame[data.sensor_names].to_numpy()
    assert ((values >= lows) & (values <= highs)).all()
