"""Inference log (partitioned Parquet, background writer) and offline batch scoring (score_file)."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from plantwatch import inference_log as ilog
from plantwatch import schema, scoring
from plantwatch.errors import UsageError
from plantwatch.review import ReviewQueue
from tests.unit.test_serving import SENSORS, OrderSensitiveBundle


def _frame(n: int = 4, asset: str = "pump-1") -> pd.DataFrame:
    return pd.DataFrame(
        {
            schema.TIMESTAMP: pd.date_range("2024-01-01", periods=n, freq="min"),
            schema.ASSET: [asset] * n,
            "temperature": [20.0, 21.0, 40.0, 46.0][:n],
            "vibration": [1.0, None, 1.0, 1.0][:n],
        }
    )


def _log(version: str, logged_at: datetime, request_id: str = "r") -> pd.DataFrame:
    frame = _frame()
    results = scoring.score_readings(OrderSensitiveBundle(), frame)
    return ilog.build_log_frame(
        frame,
        results,
        sensors=SENSORS,
        request_id=request_id,
        model_version=version,
        threshold=10.0,
        source=ilog.SOURCE_HTTP,
        logged_at=logged_at,
    )


def test_log_files_are_partitioned_by_scoring_day_and_model_version(tmp_path: Path) -> None:
    day1, day2 = datetime(2024, 5, 1, 23, 59), datetime(2024, 5, 2, 0, 1)
    log = pd.concat(
        [_log("m:1", day1, "a"), _log("m:2", day1, "b"), _log("m:1", day2, "c")], ignore_index=True
    )
    written = ilog.write_log(log, tmp_path, SENSORS)
    assert len(written) == 3
    assert sorted(p.parent.name for p, _ in written) == [
        "date=2024-05-01",
        "date=2024-05-01",
        "date=2024-05-02",
    ]
    for path, rows in written:
        table = pq.read_table(path)
        assert table.schema.field("rules").type == pa.list_(pa.string())
        assert table.schema.field(schema.TIMESTAMP).type == pa.timestamp("ns")
        assert table.column("model_version").unique().to_pylist() == [rows["model_version"].iloc[0]]
        assert table.column("row").to_pylist() == list(range(len(rows)))
    assert not list(tmp_path.rglob("*.tmp"))
    back = ilog.read_log(tmp_path)
    assert len(back) == 12 and set(back["request_id"]) == {"a", "b", "c"}
    assert back.loc[back["request_id"] == "a", "decision"].tolist() == ["normal", "normal", "alert", "review"]
    assert json.loads(back["top_sensors"].iloc[2]) == [{"sensor": "temperature", "contribution": 19.0}]
    assert back["vibration"].isna().sum() == 3


def test_background_writer_flushes_on_size_and_on_close(tmp_path: Path) -> None:
    seen: list[tuple[Path | None, int]] = []
    first = threading.Event()

    def hook(path: Path | None, rows: pd.DataFrame) -> None:
        seen.append((path, len(rows)))
        first.set()

    writer = ilog.InferenceLogWriter(tmp_path, SENSORS, flush_s=60.0, flush_rows=8, on_written=hook)
    writer.submit(lambda: _log("m:1", datetime(2024, 5, 1)), 4)
    assert not first.wait(0.2)  # below flush_rows and long before flush_s: nothing written yet
    writer.submit(lambda: _log("m:1", datetime(2024, 5, 1)), 4)
    assert first.wait(5.0)  # reaching flush_rows wakes the writer
    writer.submit(lambda: _log("m:1", datetime(2024, 5, 1)), 4)
    writer.close()  # the rest is flushed on close
    assert [n for _, n in seen] == [8, 4]
    assert len(ilog.read_log(tmp_path)) == 12


def test_writer_survives_failures_and_can_run_without_a_log(tmp_path: Path) -> None:
    def bad_build() -> pd.DataFrame:
        raise OSError("disk full")

    calls: list[Path | None] = []
    writer = ilog.InferenceLogWriter(
        None, SENSORS, flush_s=60.0, flush_rows=100, on_written=lambda p, r: calls.append(p)
    )
    writer.submit(bad_build, 4)
    assert writer.flush() == 0  # dropped, logged, writer still alive
    writer.submit(lambda: _log("m:1", datetime(2024, 5, 1)), 4)
    writer.close()
    assert calls == [None]


def test_review_candidates_point_at_the_log_row(tmp_path: Path) -> None:
    log = _log("m:1", datetime(2024, 5, 1))
    items = scoring.review_candidates(
        log, sensors=SENSORS, decisions=["review"], source_file="data/x.parquet"
    )
    assert [i.decision for i in items] == ["review"]
    assert items[0].source == {"row": 3, "file": "data/x.parquet"}
    assert items[0].threshold == 10.0 and items[0].model_version == "m:1"
    both = scoring.review_candidates(log, sensors=SENSORS, decisions=["review", "alert"], source_file=None)
    assert [i.decision for i in both] == ["alert", "review"]


# --------------------------------------------------------------------------------------------
# plantwatch score (I/O shell)
# --------------------------------------------------------------------------------------------


def _score(tmp_path: Path, src: Path, out: Path, log: bool = True) -> scoring.ScoreSummary:
    return scoring.score_file(
        src,
        out,
        bundle=OrderSensitiveBundle(),
        model_version="m:1",
        default_asset="pump-1",
        project_root=tmp_path,
        log_root=tmp_path / "data" / "inference" if log else None,
        queue=ReviewQueue(tmp_path / "queue.sqlite"),
        review_decisions=["review", "alert"],
        request_id="batch-1",
    )


def test_score_file_writes_results_logs_and_enqueues(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    frame = pd.concat([_frame(asset="pump-2"), _frame()], ignore_index=True)
    frame["label"] = 0
    frame.to_csv(src, index=False)
    summary = _score(tmp_path, src, tmp_path / "out.parquet")
    assert summary.rows == 8 and summary.decisions == {"normal": 4, "review": 2, "alert": 2}
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert out["asset"].tolist() == ["pump-2"] * 4 + ["pump-1"] * 4  # input order kept
    assert "label" in out.columns and list(out["rules"].iloc[1]) == ["missing:vibration"]
    log = ilog.read_log(tmp_path / "data" / "inference")
    assert set(log["source"]) == {"batch"} and set(log["request_id"]) == {"batch-1"}
    items = ReviewQueue(tmp_path / "queue.sqlite").list()
    assert len(items) == 4 and summary.review_items == 4
    assert items[0].source["file"].startswith("data/inference/date=")


def test_score_file_without_log_still_enqueues_and_writes_csv(tmp_path: Path) -> None:
    src = tmp_path / "in.parquet"
    _frame().drop(columns=[schema.ASSET]).to_parquet(src)  # single-asset file: default asset
    summary = _score(tmp_path, src, tmp_path / "out.csv", log=False)
    assert summary.log_files == [] and not (tmp_path / "data").exists()
    out = pd.read_csv(tmp_path / "out.csv")
    assert out["asset"].unique().tolist() == ["pump-1"]
    assert json.loads(out["top_sensors"].iloc[2]) == [{"sensor": "temperature", "contribution": 19.0}]
    assert len(ReviewQueue(tmp_path / "queue.sqlite").list()) == 2


def test_score_file_refuses_bad_inputs(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    _frame(asset="pump-7").to_csv(src, index=False)
    with pytest.raises(scoring.InvalidReadings, match="unknown asset"):
        _score(tmp_path, src, tmp_path / "out.csv")
    with pytest.raises(UsageError, match="unsupported file type"):
        _score(tmp_path, src, tmp_path / "out.xlsx")
    with pytest.raises(UsageError, match="not found"):
        _score(tmp_path, tmp_path / "missing.csv", tmp_path / "out.csv")
    _frame().drop(columns=["vibration"]).to_csv(src, index=False)
    with pytest.raises(scoring.InvalidReadings, match="missing column"):
        _score(tmp_path, src, tmp_path / "out.csv")
