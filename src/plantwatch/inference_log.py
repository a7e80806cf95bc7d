"""The inference log: every scored reading, appended as Parquet partitioned by scoring day.

Layout: ``data/inference/date=YYYY-MM-DD/<uuid>.parquet`` (hive-style, so pyarrow/pandas/DuckDB read
the folder as one table with a ``date`` column). ``date`` is the UTC day the reading was *scored*,
not the reading's own timestamp: monitoring asks "what did the service see today".

Each file holds rows of one model version (review items point into a file by row number and carry
one version). Files are written to a hidden temporary name and renamed, so a reader (monitoring,
``plantwatch review stats``) never sees half a file. The service buffers rows and writes them from a
background thread (``InferenceLogWriter``): a Parquet write per request would cost more than scoring
a single reading.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from plantwatch import schema

logger = logging.getLogger(__name__)

REQUEST_ID = "request_id"
LOGGED_AT = "logged_at"
SOURCE = "source"
MODEL_VERSION = "model_version"
THRESHOLD = "threshold"
ROW = "row"
SCORE = "score"
DECISION = "decision"
RULES = "rules"
TOP_SENSORS = "top_sensors"
FULL_HISTORY = "full_history"
PARTITION = "date"

#: Where a logged row came from.
SOURCE_HTTP = "http"
SOURCE_BATCH = "batch"

_META_BEFORE = (REQUEST_ID, LOGGED_AT, SOURCE, MODEL_VERSION, THRESHOLD, ROW, schema.TIMESTAMP, schema.ASSET)
_RESULTS_AFTER = (SCORE, DECISION, RULES, TOP_SENSORS, FULL_HISTORY)


def log_schema(sensors: Sequence[str]) -> pa.Schema:
    """Arrow schema of a log file; explicit so that empty ``rules`` lists never become ``list<null>``."""
    clash = set(sensors).intersection(_META_BEFORE + _RESULTS_AFTER + (PARTITION,))
    if clash:
        raise ValueError(f"sensor names clash with inference-log columns: {sorted(clash)}")
    fields = [
        pa.field(REQUEST_ID, pa.string(), nullable=False),
        pa.field(LOGGED_AT, pa.timestamp("us"), nullable=False),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(MODEL_VERSION, pa.string(), nullable=False),
        pa.field(THRESHOLD, pa.float64()),
        pa.field(ROW, pa.int64(), nullable=False),
        pa.field(schema.TIMESTAMP, pa.timestamp("ns"), nullable=False),
        pa.field(schema.ASSET, pa.string(), nullable=False),
        *(pa.field(s, pa.float64()) for s in sensors),
        pa.field(SCORE, pa.float64(), nullable=False),
        pa.field(DECISION, pa.string(), nullable=False),
        pa.field(RULES, pa.list_(pa.string()), nullable=False),
        pa.field(TOP_SENSORS, pa.string(), nullable=False),  # JSON list of {sensor, contribution}
        pa.field(FULL_HISTORY, pa.bool_(), nullable=False),
    ]
    return pa.schema(fields)


def build_log_frame(
    readings: pd.DataFrame,
    results: pd.DataFrame,
    *,
    sensors: Sequence[str],
    request_id: str,
    model_version: str,
    threshold: float | None,
    source: str,
    logged_at: datetime,
) -> pd.DataFrame:
    """Inputs + results of one scoring call as log rows (pure; ``logged_at`` naive UTC)."""
    n = len(readings)
    frame = pd.DataFrame(
        {
            REQUEST_ID: [request_id] * n,
            LOGGED_AT: pd.Series([logged_at] * n, dtype="datetime64[us]"),
            SOURCE: [source] * n,
            MODEL_VERSION: [model_version] * n,
            THRESHOLD: float("nan") if threshold is None else float(threshold),
            ROW: range(n),
            schema.TIMESTAMP: readings[schema.TIMESTAMP].to_numpy(),
            schema.ASSET: readings[schema.ASSET].astype(str).to_numpy(),
        }
    )
    for s in sensors:
        frame[s] = readings[s].to_numpy(dtype="float64")
    frame[SCORE] = results[SCORE].to_numpy(dtype="float64")
    frame[DECISION] = results[DECISION].to_numpy()
    frame[RULES] = [list(r) for r in results[RULES]]
    frame[TOP_SENSORS] = [json.dumps(_plain_top(t)) for t in results[TOP_SENSORS]]
    frame[FULL_HISTORY] = results[FULL_HISTORY].to_numpy(dtype=bool)
    return frame


def _plain_top(top: Sequence[dict]) -> list[dict]:
    return [{"sensor": str(t["sensor"]), "contribution": float(t["contribution"])} for t in top]


def partition_dir(root: Path, day: str) -> Path:
    return root / f"{PARTITION}={day}"


def write_log(log: pd.DataFrame, root: Path, sensors: Sequence[str]) -> list[tuple[Path, pd.DataFrame]]:
    """Append log rows: one new file per (scoring day, model version); returns (file, its rows).

    ``root`` is the inference-log folder (``ProjectPaths.inference_log``).
    """
    if log.empty:
        return []
    arrow_schema = log_schema(sensors)
    days = log[LOGGED_AT].dt.strftime("%Y-%m-%d")
    written: list[tuple[Path, pd.DataFrame]] = []
    for (day, _version), part in log.groupby([days, log[MODEL_VERSION]], sort=True):
        part = part.reset_index(drop=True)
        folder = partition_dir(root, str(day))
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{uuid.uuid4().hex}.parquet"
        tmp = folder / f".{name}.tmp"  # hidden: dataset readers skip dot-files
        table = pa.Table.from_pandas(part[arrow_schema.names], schema=arrow_schema, preserve_index=False)
        pq.write_table(table, tmp)
        os.replace(tmp, folder / name)
        written.append((folder / name, part))
    return written


def read_log(root: Path) -> pd.DataFrame:
    """The whole log as one frame (oldest file first), with the ``date`` partition as text."""
    files = sorted(root.glob(f"{PARTITION}=*/*.parquet"), key=lambda p: (p.parent.name, p.stat().st_mtime))
    if not files:
        return pd.DataFrame()
    frames = []
    for f in files:
        part = pq.read_table(f).to_pandas()
        part[PARTITION] = f.parent.name.split("=", 1)[1]
        frames.append(part)
    return pd.concat(frames, ignore_index=True)


OnWritten = Callable[[Path | None, pd.DataFrame], None]


@dataclass
class _Buffer:
    frames: list[Callable[[], pd.DataFrame]]
    rows: int = 0


class InferenceLogWriter:
    """Buffers log rows and appends them from a background thread.

    Written at most ``flush_s`` seconds after ``submit`` or as soon as ``flush_rows`` rows wait,
    and on ``close``. ``on_written(file, rows)`` runs after each file lands (the service enqueues
    review items there); with ``root=None`` nothing is written and the hook gets ``file=None``.
    A failed write is logged and its rows dropped: the log must never take the scoring service
    down, and retrying a poisoned batch forever would.
    """

    def __init__(
        self,
        root: Path | None,
        sensors: Sequence[str],
        *,
        flush_s: float,
        flush_rows: int,
        on_written: OnWritten | None = None,
    ) -> None:
        self.root = root
        self.sensors = list(sensors)
        self.flush_s = flush_s
        self.flush_rows = flush_rows
        self.on_written = on_written
        self._buffer = _Buffer(frames=[])
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="plantwatch-inference-log", daemon=True)
        self._thread.start()

    def submit(self, build: Callable[[], pd.DataFrame], rows: int) -> None:
        """Queue ``rows`` log rows; ``build()`` makes them later, off the request's critical path."""
        with self._lock:
            self._buffer.frames.append(build)
            self._buffer.rows += rows
            full = self._buffer.rows >= self.flush_rows
        if full:
            self._wake.set()

    def flush(self) -> int:
        """Write whatever is buffered now; returns the number of rows handled."""
        with self._flush_lock:
            with self._lock:
                frames, self._buffer = self._buffer.frames, _Buffer(frames=[])
            if not frames:
                return 0
            try:
                log = pd.concat([build() for build in frames], ignore_index=True)
                written = (
                    write_log(log, self.root, self.sensors)
                    if self.root is not None
                    else [(None, part.reset_index(drop=True)) for _, part in log.groupby(MODEL_VERSION)]
                )
            except Exception:
                logger.exception("inference log: %d request(s) not written, dropped", len(frames))
                return 0
            for path, rows in written:
                if self.on_written is not None:
                    try:
                        self.on_written(path, rows)
                    except Exception:
                        logger.exception("inference log: post-write hook failed for %s", path)
            return len(log)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            self.flush()
