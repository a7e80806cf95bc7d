"""Validation: every expectation catches its own defect, rows are conserved, batches are refused
whole when they must be, the suite on disk is what params generate, and the CLI's exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from plantwatch import schema
from plantwatch.config import Params, ValidateConfig, load_params
from plantwatch.config.simulate import DefectsConfig
from plantwatch.ingest import TYPE_ERRORS, normalise
from plantwatch.simulate import DEFECT_KINDS, drop_column, inject_defects, simulate_fleet, with_wrong_types
from plantwatch.validation import (
    REASON,
    GXRunner,
    ValidationIntegrityError,
    ValidationOutcome,
    build_suite,
    ledger_line,
    read_ledger,
    sync_suite,
    validate_frame,
)
from plantwatch.validation.expectations import run_lengths
from plantwatch.validation.suite import SuitePlan

DEFECT_SEED = 11
#: Reason (prefix) each row-level defect of ``inject_defects`` must be quarantined with.
ROW_REASONS = {"duplicate": "duplicate key", "out_of_order": "out of order", "out_of_range": "out of range: "}


@pytest.fixture(scope="module")
def params(repo_root: Path) -> Params:
    return load_params(repo_root / "params.yaml")


@pytest.fixture(scope="module")
def clean_fleet(params: Params) -> pd.DataFrame:
    """2 assets x 1 day without fault episodes: nothing in it may fail."""
    sim = params.simulate.model_copy(update={"anomaly_rate": 0.0})
    return simulate_fleet(sim, params.data, seed=3, assets=2, days=1.0)


def _only(kind: str, share: float = 0.004) -> DefectsConfig:
    return DefectsConfig(**{k: (share if k == kind else 0.0) for k in DEFECT_KINDS})


def _failed(outcome: ValidationOutcome) -> set[str]:
    return {r.reason for r in outcome.expectations if not r.success}


def _reasons_by_row(outcome: ValidationOutcome) -> dict[int, str]:
    return dict(zip(outcome.quarantined[schema.ROW_ID], outcome.quarantined[REASON], strict=True))


def test_clean_batch_passes_every_expectation(clean_fleet: pd.DataFrame, params: Params) -> None:
    outcome = validate_frame(clean_fleet, params.data, params.validate_)
    assert outcome.status == "accepted"
    assert [r.reason for r in outcome.expectations if not r.success] == []
    assert outcome.rows_quarantined == 0 and outcome.warnings == {}
    pd.testing.assert_frame_equal(outcome.clean, clean_fleet)
    assert outcome.expectations_evaluated == build_suite(params.data, params.validate_).size


@pytest.mark.parametrize("kind", sorted(ROW_REASONS))
def test_each_row_defect_is_caught_by_its_own_expectation(
    kind: str, clean_fleet: pd.DataFrame, params: Params
) -> None:
    damaged, where = inject_defects(clean_fleet, params.data, seed=DEFECT_SEED, config=_only(kind))
    assert where[kind], "the simulator placed no defect"
    outcome = validate_frame(damaged, params.data, params.validate_)
    assert outcome.status == "accepted"
    by_row = _reasons_by_row(outcome)
    assert sorted(by_row) == where[kind]  # exactly the defective rows, no collateral
    assert all(reason.startswith(ROW_REASONS[kind]) for reason in by_row.values())
    assert {r.split(":")[0] for r in _failed(outcome)} == {ROW_REASONS[kind].split(":")[0]}
    assert outcome.rows_clean == len(damaged) - len(where[kind])


def test_missing_values_are_kept_below_the_null_share_and_reject_above(
    clean_fleet: pd.DataFrame, params: Params
) -> None:
    damaged, where = inject_defects(clean_fleet, params.data, seed=DEFECT_SEED, config=_only("missing"))
    holed = sorted({s for s in params.data.sensor_names if damaged[s].isna().any()})
    kept = validate_frame(damaged, params.data, params.validate_)
    assert kept.status == "accepted" and kept.rows_quarantined == 0 and kept.rows_clean == len(damaged)

    strict = params.validate_.model_copy(update={"max_null_fraction": 0.0})
    refused = validate_frame(damaged, params.data, strict)
    assert refused.status == "rejected" and refused.rows_clean == 0
    assert _failed(refused) == {f"too many nulls: {s}" for s in holed}
    assert len(where["missing"]) == int(damaged[params.data.sensor_names].isna().any(axis=1).sum())


def test_defect_laden_batch_conserves_rows(clean_fleet: pd.DataFrame, params: Params) -> None:
    damaged, where = inject_defects(clean_fleet, params.data, seed=DEFECT_SEED, config=DefectsConfig())
    outcome = validate_frame(damaged, params.data, params.validate_)
    assert outcome.rows_in == len(damaged) == outcome.rows_clean + outcome.rows_quarantined
    by_row = _reasons_by_row(outcome)
    expected = {pos: ROW_REASONS[kind] for kind in ROW_REASONS for pos in where[kind]}
    assert sorted(by_row) == sorted(expected)
    assert all(by_row[pos].startswith(reason) for pos, reason in expected.items())
    assert sum(outcome.reasons.values()) == len(expected)
    # rows with a missing reading stay in the clean output (with their NaN)
    assert outcome.clean[params.data.sensor_names].isna().any(axis=1).sum() == len(where["missing"])
    assert not outcome.clean.duplicated([schema.ASSET, schema.TIMESTAMP]).any()


def test_wrong_type_values_are_quarantined_with_their_column(
    clean_fleet: pd.DataFrame, params: Params
) -> None:
    raw = clean_fleet.copy()
    raw["timestamp"] = raw["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    raw["pressure"] = raw["pressure"].astype(object)
    raw.loc[[10, 20], "pressure"] = ["12,5", "bar?"]
    raw.loc[30, "timestamp"] = "not a time"
    canonical = normalise(raw, params.data)  # ingest path: coerced, recorded
    via_ingest = validate_frame(canonical, params.data, params.validate_)
    reasons = sorted(via_ingest.quarantined[REASON])
    assert reasons == [
        "null timestamp; wrong type: timestamp",
        "wrong type: pressure",
        "wrong type: pressure",
    ]
    assert sorted(via_ingest.quarantined[TYPE_ERRORS]) == [
        "pressure='12,5'",
        "pressure='bar?'",
        "timestamp='not a time'",
    ]
    assert TYPE_ERRORS not in via_ingest.clean

    direct = clean_fleet.copy()  # a frame handed straight to validation (monitoring) gets the same
    direct["pressure"] = direct["pressure"].astype(object)
    direct.loc[5, "pressure"] = "oops"
    outcome = validate_frame(direct, params.data, params.validate_)
    assert _reasons_by_row(outcome) == {5: "wrong type: pressure"}
    assert outcome.clean["pressure"].dtype == np.float64


def test_null_keys_are_row_defects(clean_fleet: pd.DataFrame, params: Params) -> None:
    frame = clean_fleet.copy()
    frame.loc[7, schema.TIMESTAMP] = pd.NaT
    frame[schema.ASSET] = frame[schema.ASSET].astype(object)
    frame.loc[9, schema.ASSET] = None
    assert _reasons_by_row(validate_frame(frame, params.data, params.validate_)) == {
        7: "null timestamp",
        9: "null asset",
    }


def test_stuck_sensor_is_a_warning_by_default_and_quarantined_on_request(
    clean_fleet: pd.DataFrame, params: Params
) -> None:
    run = params.validate_.stuck_run_length
    frame = clean_fleet.copy()
    frame.loc[100 : 100 + run - 1, "flow"] = 123.0  # exactly one stuck run, inside asset 1
    frame.loc[300 : 300 + run - 2, "rpm"] = 1500.0  # one reading too short to count
    kept = validate_frame(frame, params.data, params.validate_)
    assert kept.status == "accepted" and kept.rows_quarantined == 0
    assert kept.warnings == {"stuck sensor: flow": run}

    quarantining = params.validate_.model_copy(update={"quarantine_stuck": True})
    out = validate_frame(frame, params.data, quarantining)
    assert _reasons_by_row(out) == {i: "stuck sensor: flow" for i in range(100, 100 + run)}


def test_run_lengths_are_per_asset_and_ignore_nan() -> None:
    keys = pd.Series(["a", "b", "a", "b", "a", "a", "a"])
    values = pd.Series([1.0, 1.0, 1.0, 2.0, np.nan, 1.0, 1.0])
    # asset a reads 1, 1, NaN, 1, 1 -> runs of 2, a NaN, and 2; asset b reads 1, 2
    assert run_lengths(keys, values).tolist() == [2, 1, 2, 1, 1, 2, 2]


def test_missing_column_rejects_the_whole_batch_with_one_reason(
    clean_fleet: pd.DataFrame, params: Params
) -> None:
    outcome = validate_frame(drop_column(clean_fleet, "rpm"), params.data, params.validate_)
    assert outcome.status == "rejected"
    assert outcome.batch_failures == ["missing column(s): rpm"]  # no cascade of follow-up errors
    assert outcome.rows_quarantined == outcome.rows_in and outcome.clean.empty
    assert set(outcome.quarantined[REASON]) == {"batch rejected: missing column(s): rpm"}


def test_text_column_rejects_the_batch_and_says_why(clean_fleet: pd.DataFrame, params: Params) -> None:
    outcome = validate_frame(with_wrong_types(clean_fleet, "temperature"), params.data, params.validate_)
    assert outcome.status == "rejected"
    assert outcome.batch_failures == [
        "too many nulls: temperature (100.00% > 5.00%; 100.00% of values are not numbers)"
    ]


def test_row_count_bounds(clean_fleet: pd.DataFrame, params: Params) -> None:
    outcome = validate_frame(clean_fleet.head(10), params.data, params.validate_)
    assert outcome.status == "rejected"
    assert outcome.batch_failures == ["row count out of bounds: 10 rows, expected 50..50000000"]


def test_sampling_gaps_tolerated_up_to_mostly(clean_fleet: pd.DataFrame, params: Params) -> None:
    step = int(np.ceil(params.validate_.max_gap_factor)) + 1  # each kept reading follows a gap
    sparse = clean_fleet.iloc[::step].reset_index(drop=True)
    refused = validate_frame(sparse, params.data, params.validate_)
    assert refused.status == "rejected" and _failed(refused) == {"too many sampling gaps"}

    one_gap = clean_fleet.drop(index=range(200, 200 + step)).reset_index(drop=True)
    accepted = validate_frame(one_gap, params.data, params.validate_)
    assert accepted.status == "accepted" and accepted.rows_quarantined == 0  # the reading after a gap is fine


def test_expectation_count_must_match_the_suite(clean_fleet: pd.DataFrame, params: Params) -> None:
    real = build_suite(params.data, params.validate_)

    class ShortRunner(GXRunner):
        """Runs a suite that lost expectations (as a stale or half-loaded suite would)."""

        def __init__(self, keep: int) -> None:
            super().__init__(GXRunner.ephemeral().context)
            self.keep = keep

        def validate(self, frame: pd.DataFrame, plan: SuitePlan, *, run_name: str):  # type: ignore[override]
            short = build_suite(params.data, params.validate_)
            del short.suite.expectations[self.keep :]
            return super().validate(frame, SuitePlan(short.suite, "short"), run_name=run_name)

    for keep in (0, real.size - 1):
        with pytest.raises(
            ValidationIntegrityError, match=rf"evaluated {keep} expectations .* has {real.size}"
        ):
            validate_frame(clean_fleet, params.data, params.validate_, runner=ShortRunner(keep), plan=real)


def test_ledger_line_refuses_rows_that_do_not_add_up(clean_fleet: pd.DataFrame, params: Params) -> None:
    outcome = validate_frame(clean_fleet, params.data, params.validate_)
    broken = ValidationOutcome(**{**outcome.__dict__, "rows_in": outcome.rows_in + 1})
    with pytest.raises(ValidationIntegrityError, match="does not add up"):
        ledger_line(broken, "test", pd.Timestamp.now(tz="UTC").to_pydatetime())


@pytest.mark.parametrize(
    "params_file", ["params.yaml", "params/smd.yaml", "params/asd.yaml", "params/nab.yaml"]
)
def test_committed_suite_is_what_params_generate(repo_root: Path, params_file: str) -> None:
    p = load_params(repo_root / params_file)
    plan = build_suite(p.data, p.validate_)
    stored = json.loads((repo_root / "expectations" / f"{plan.name}.json").read_text())
    assert stored["meta"]["plantwatch"]["suite_version"] == plan.version
    generated = [
        {"type": e.configuration.type, "kwargs": e.configuration.kwargs, "meta": e.meta}
        for e in plan.suite.expectations
    ]
    on_disk = [{"type": e["type"], "kwargs": e["kwargs"], "meta": e["meta"]} for e in stored["expectations"]]
    key = lambda e: json.dumps(e, sort_keys=True)  # noqa: E731
    assert sorted(map(key, on_disk)) == sorted(map(key, json.loads(json.dumps(generated, default=str))))


def test_rebuilding_the_suite_leaves_the_committed_file_unchanged(project: Path, repo_root: Path) -> None:
    before = (project / "expectations" / "raw_telemetry.json").read_bytes()
    params = load_params(project / "params.yaml")
    from plantwatch.paths import ProjectPaths

    sync_suite(params, ProjectPaths.at(project))
    sync_suite(params, ProjectPaths.at(project))
    assert (project / "expectations" / "raw_telemetry.json").read_bytes() == before
    assert not (project / "expectations" / ".ge_store_backend_id").exists()


def test_validate_version_changes_with_params(params: Params) -> None:
    looser = params.validate_.model_copy(update={"stuck_run_length": params.validate_.stuck_run_length + 1})
    assert build_suite(params.data, looser).version != build_suite(params.data, params.validate_).version


# --- CLI + files -----------------------------------------------------------------------------------


def _write_batch(project: Path, frame: pd.DataFrame, name: str = "batch.parquet") -> Path:
    path = project / name
    frame.to_parquet(path, index=False)
    return path


def test_cli_validate_accepts_quarantines_and_records(
    project: Path, clean_fleet: pd.DataFrame, params: Params
) -> None:
    from plantwatch.cli import app

    damaged, where = inject_defects(clean_fleet, params.data, seed=DEFECT_SEED, config=_only("out_of_range"))
    interim = project / "data" / "interim" / "telemetry.parquet"
    interim.parent.mkdir(parents=True)
    damaged.to_parquet(interim, index=False)
    result = CliRunner().invoke(app, ["validate", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "accepted" and summary["rows_quarantined"] == len(where["out_of_range"])

    batch = summary["batch_id"]
    quarantine = pd.read_parquet(project / "data" / "quarantine" / f"{batch}.parquet")
    assert sorted(quarantine[schema.ROW_ID]) == where["out_of_range"]
    assert (quarantine[schema.BATCH_ID] == batch).all()
    clean = pd.read_parquet(project / "data" / "processed" / "clean.parquet")
    assert len(clean) + len(quarantine) == len(damaged)
    (line,) = read_ledger(project / "data" / "quarantine" / "ledger.jsonl")
    assert line["rows_in"] == line["rows_clean"] + line["rows_quarantined"] == len(damaged)
    assert line["status"] == "accepted" and line["suite_name"] == "raw_telemetry"
    assert line["expectations_evaluated"] == build_suite(params.data, params.validate_).size
    assert line["suite_version"] == build_suite(params.data, params.validate_).version
    report = json.loads((project / "reports" / "validation" / f"{batch}.json").read_text())
    assert len(report["expectations"]) == line["expectations_evaluated"]
    assert (project / "reports" / "data_docs" / "index.html").exists()


def test_cli_validate_rejected_batch_is_one_line_exit_1(project: Path, clean_fleet: pd.DataFrame) -> None:
    from plantwatch.cli import app

    stale = project / "data" / "processed" / "clean.parquet"
    stale.parent.mkdir(parents=True)
    clean_fleet.to_parquet(stale, index=False)
    path = _write_batch(project, drop_column(clean_fleet, "rpm"))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "rejected: missing column(s): rpm" in lines[0], result.output
    assert not stale.exists()  # no older clean file left for training to pick up
    (line,) = read_ledger(project / "data" / "quarantine" / "ledger.jsonl")
    assert (
        line["status"] == "rejected"
        and line["rows_quarantined"] == len(clean_fleet)
        and line["rows_clean"] == 0
    )


@pytest.mark.parametrize("arg", ["missing.parquet", "params.yaml"])
def test_cli_validate_usage_errors_exit_2(project: Path, arg: str) -> None:
    from plantwatch.cli import app

    result = CliRunner().invoke(app, ["validate", arg])
    assert result.exit_code == 2, result.output
    assert len([ln for ln in result.output.splitlines() if ln.strip()]) == 1


# --- real data -------------------------------------------------------------------------------------


def _dataset(repo_root: Path, datasets_dir: Path, key: str, file: str) -> tuple[Params, pd.DataFrame]:
    raw = yaml.safe_load((repo_root / "params" / f"{key}.yaml").read_text())
    raw["data"]["sources"] = [str(datasets_dir / file)]
    from plantwatch.config import parse_params

    p = parse_params(raw)
    return p, normalise(pd.read_csv(datasets_dir / file), p.data)


def test_smd_validates_with_its_params(repo_root: Path, datasets_dir: Path) -> None:
    p, frame = _dataset(repo_root, datasets_dir, "smd", "smd_machine-2-1.csv.gz")
    part = frame.iloc[p.data.train_rows - 3000 : p.data.train_rows + 3000]  # both sides of the split
    outcome = validate_frame(part, p.data, p.validate_)
    assert outcome.status == "accepted" and outcome.rows_quarantined == 0
    assert outcome.expectations_evaluated == build_suite(p.data, p.validate_).size
    # SMD has metrics that never change: reported, kept
    assert outcome.warnings.get("stuck sensor: m07") == len(part)


def test_nab_repeated_clock_hour_is_quarantined(repo_root: Path, datasets_dir: Path) -> None:
    p, frame = _dataset(repo_root, datasets_dir, "nab", "nab_machine_temperature.csv.gz")
    outcome = validate_frame(frame, p.data, p.validate_)
    repeats = int(frame.duplicated([schema.ASSET, schema.TIMESTAMP]).sum())
    assert repeats > 0  # the clock change repeats an hour of timestamps
    assert outcome.status == "accepted" and outcome.reasons == {"duplicate key": repeats}


def test_validate_config_rejects_inverted_row_bounds() -> None:
    with pytest.raises(ValueError, match="min_rows"):
        ValidateConfig(min_rows=10, max_rows=5)


def test_representation_is_canonicalised_but_values_are_not(
    clean_fleet: pd.DataFrame, params: Params
) -> None:
    aware = clean_fleet.assign(
        timestamp=clean_fleet[schema.TIMESTAMP].dt.tz_localize("UTC").dt.tz_convert("Europe/Berlin"),
        asset=clean_fleet[schema.ASSET].astype("category"),
    )
    outcome = validate_frame(aware, params.data, params.validate_)
    assert outcome.status == "accepted"
    pd.testing.assert_frame_equal(outcome.clean, clean_fleet)  # same instants, naive UTC, object asset

    as_text = clean_fleet.assign(timestamp=clean_fleet[schema.TIMESTAMP].astype(str))
    refused = validate_frame(as_text, params.data, params.validate_)
    assert refused.batch_failures == ["wrong column type: timestamp is object (expected datetime64[ns])"]


def test_empty_batch_is_rejected_for_its_size_only(clean_fleet: pd.DataFrame, params: Params) -> None:
    outcome = validate_frame(clean_fleet.head(0), params.data, params.validate_)
    assert outcome.status == "rejected" and outcome.rows_in == 0 and outcome.rows_quarantined == 0
    assert outcome.batch_failures == ["row count out of bounds: 0 rows, expected 50..50000000"]
