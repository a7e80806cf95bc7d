"""Data conservation through ingest and validation, with replays and retries.

A source file plus three landing deliveries: one new batch, one batch overlapping it (a
re-delivery with repeated rows) and a byte-identical replay under another name. Ingest runs
twice (a retried stage), validation runs twice on the result. Promises, with numbers:

* ingest: rows out = rows of distinct deliveries (the replay is skipped, the retry adds nothing);
* validation: rows in = rows clean + rows quarantined, and clean + quarantined is exactly the
  input as a multiset (nothing lost, nothing invented);
* no duplicate (asset, timestamp) in the clean rows; every quarantined row has a reason;
* a retry gives identical clean and quarantine files and a ledger whose every line adds up.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from plantwatch import schema
from plantwatch.config import load_params
from plantwatch.ingest import ingest
from plantwatch.paths import ProjectPaths
from plantwatch.simulate import inject_defects, simulate_fleet
from plantwatch.validation import REASON, clean_path, quarantine_path, read_ledger, validate_path
from tests.reliability.conftest import record_figure

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ASSETS = 3
DAYS = 2.0
DEFECT_SEED = 5
KEY = [schema.ASSET, schema.TIMESTAMP]


def _canonical_sorted(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    out = frame[columns].copy()
    return out.sort_values(columns, kind="stable", na_position="last").reset_index(drop=True)


def test_replays_and_retries_conserve_every_row(project: Path) -> None:
    params = load_params(project / "params.yaml")
    paths = ProjectPaths.at(project)
    fleet = simulate_fleet(params.simulate, params.data, seed=9, assets=ASSETS, days=DAYS)
    t = fleet[schema.TIMESTAMP]
    q40, q65, q70 = t.quantile(0.40), t.quantile(0.65), t.quantile(0.70)
    raw, defects = inject_defects(fleet[t < q40].reset_index(drop=True), params.data, seed=DEFECT_SEED)
    batch_a = fleet[(t >= q40) & (t < q70)]
    batch_b = fleet[t >= q65]  # overlaps batch A: a re-delivery repeating ~5 % of the rows
    overlap = int(((t >= q65) & (t < q70)).sum())
    landing = project / params.data.landing_dir
    landing.mkdir(parents=True)
    (project / "data" / "raw").mkdir(parents=True)
    raw.to_parquet(project / params.data.sources[0], index=False)
    batch_a.to_parquet(landing / "a.parquet", index=False)
    batch_b.to_csv(landing / "b.csv", index=False)
    delivered = len(raw) + len(batch_a) + len(batch_b)

    interim_1, summary = ingest(params.data, paths)
    assert len(interim_1) == delivered and not summary.skipped_replays
    shutil.copy(landing / "a.parquet", landing / "a-again.parquet")  # replayed later, another name
    interim_2, summary_2 = ingest(params.data, paths)  # ... and the stage retried
    assert len(interim_2) == delivered
    assert list(summary_2.skipped_replays) == ["data/landing/a-again.parquet"]
    pd.testing.assert_frame_equal(interim_1, interim_2)

    interim_file = paths.resolve(params.data.interim_path)
    outcomes = [validate_path(interim_file, params, paths) for _ in range(2)]  # validation retried
    first, second = outcomes
    columns = [schema.TIMESTAMP, schema.ASSET, *params.data.sensor_names]
    for out in outcomes:
        assert out.rows_in == delivered
        assert out.rows_clean + out.rows_quarantined == out.rows_in
        assert out.accepted, out.one_line()
        assert not out.clean.duplicated(KEY).any()
        reasons = out.quarantined[REASON].astype(str).str.strip()
        assert (reasons != "").all() and out.quarantined[REASON].notna().all()
        assert out.quarantined[schema.ROW_ID].is_unique
        together = pd.concat([out.clean[columns], out.quarantined[columns]], ignore_index=True)
        pd.testing.assert_frame_equal(
            _canonical_sorted(together, columns), _canonical_sorted(interim_1, columns), check_dtype=False
        )
    # every repeated row (injected duplicates + the overlapping re-delivery) is quarantined exactly
    # once, and so is every out-of-range reading (out-of-order swaps are re-sorted by ingest)
    assert first.reasons.get("duplicate key") == overlap + len(defects["duplicate"]), first.reasons
    assert first.rows_quarantined >= overlap + len(defects["duplicate"]) + len(defects["out_of_range"])
    assert first.batch_id == second.batch_id
    pd.testing.assert_frame_equal(first.clean, second.clean)
    pd.testing.assert_frame_equal(first.quarantined, second.quarantined)
    stored = pd.read_parquet(clean_path(paths))
    assert len(stored) == first.rows_clean and not stored.duplicated(KEY).any()
    assert len(pd.read_parquet(quarantine_path(paths, first.batch_id))) == first.rows_quarantined
    ledger = read_ledger(paths.ledger)
    assert len(ledger) == 2
    assert all(line["rows_in"] == line["rows_clean"] + line["rows_quarantined"] for line in ledger)
    counts = f"{first.rows_in} / {first.rows_clean} / {first.rows_quarantined}"
    record_figure("conservation: rows in / clean / quarantined", counts, "in = clean + quarantined")
    record_figure("conservation: lost / duplicated / reasonless rows", "0 / 0 / 0",
                  "after 1 replay + 2 retries")
