"""Human-in-the-loop review queue: borderline and alerting readings wait here for a human verdict.

Why a queue at all: the detector is only as good as its labels, and the readings the model is least
sure about (the review band just under the alert threshold) are exactly the ones where a human
verdict is worth most. Verdicts flow back three ways:

* evaluation / thresholds: :func:`merge_review_labels` overrides source labels before the split, so
  the next training run is evaluated and calibrated on what reviewers said;
* monitoring: :meth:`ReviewQueue.stats` gives the review rate, alert confirmation share and time to
  review for the dashboard;
* the service: :func:`submit_feedback` is the core of ``POST /feedback`` (token-protected).

Storage is one SQLite file in WAL mode, shared by the service, the CLI and the training pipeline
(several processes). Every write runs in a ``BEGIN IMMEDIATE`` transaction, so concurrent writers
queue on SQLite's lock (``busy_timeout``) instead of failing or interleaving; every label action is
kept in a history table, and the item row carries the latest verdict ("later verdict wins").
"""

from __future__ import annotations

import builtins
import hmac
import json
import logging
import math
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from plantwatch.config.review import ReviewConfig
from plantwatch.errors import DataError, HttpError
from plantwatch.paths import ProjectPaths
from plantwatch.schema import ASSET, DECISION_ALERT, DECISION_REVIEW, DECISIONS, LABEL, TIMESTAMP

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------

VERDICT_ANOMALY = "anomaly"
VERDICT_NORMAL = "normal"
VERDICTS = (VERDICT_ANOMALY, VERDICT_NORMAL)
#: How a verdict becomes the canonical 0/1 ``label``.
VERDICT_LABEL: dict[str, int] = {VERDICT_ANOMALY: 1, VERDICT_NORMAL: 0}

STATUS_OPEN = "open"
STATUS_LABELLED = "labelled"
STATUS_ALL = "all"
STATUSES = (STATUS_OPEN, STATUS_LABELLED)

#: Decisions the scoring service may enqueue (``normal`` readings are never queued).
QUEUE_DECISIONS = (DECISION_REVIEW, DECISION_ALERT)

#: Where an item came from: queued by the scorer, or created by a reviewer's feedback on a reading
#: that was never queued (a disputed alert, a missed anomaly).
ORIGIN_SCORING = "scoring"
ORIGIN_FEEDBACK = "feedback"
ORIGINS = (ORIGIN_SCORING, ORIGIN_FEEDBACK)

#: Columns added by :meth:`ReviewQueue.reviewed_labels` / :func:`merge_review_labels`.
REVIEWER = "reviewer"
LABELLED_AT = "labelled_at"
REVIEW_ITEM_ID = "review_item_id"
LABEL_SOURCE = "label_source"
LABEL_FROM_SOURCE = "source"
LABEL_FROM_REVIEW = "review"
REVIEWED_LABEL_COLUMNS = [TIMESTAMP, ASSET, LABEL, REVIEWER, LABELLED_AT, REVIEW_ITEM_ID]

#: Bumped whenever the table layout changes; ``_MIGRATIONS[v]`` upgrades a store from version v.
SCHEMA_VERSION = 1

_MS_PER_S = 1000.0
#: Pause between attempts to switch a brand-new store to WAL while another process holds it.
_WAL_RETRY_S = 0.01


# --------------------------------------------------------------------------------------------------
# Errors (each carries the HTTP status the service answers with and the CLI exit code)
# --------------------------------------------------------------------------------------------------


class ReviewError(HttpError):
    """The review store itself failed (locked too long, unreadable file, newer schema)."""

    http_status = 500
    exit_code = 1


class ReviewInputError(ReviewError):
    """A verdict, status, reviewer name, note or feedback payload is malformed."""

    http_status = 400
    exit_code = 2


class ReviewItemNotFound(ReviewError):
    """No queue item has that id."""

    http_status = 404
    exit_code = 1


class FeedbackAuthError(ReviewError):
    """Base of the feedback token refusals (nothing is written when one is raised)."""

    http_status = 401
    exit_code = 1


class FeedbackUnauthorized(FeedbackAuthError):
    """The caller sent no token."""

    http_status = 401


class FeedbackForbidden(FeedbackAuthError):
    """The caller sent a token that does not match."""

    http_status = 403


class FeedbackDisabled(FeedbackForbidden):
    """The service has no token configured: feedback is refused outright rather than left open."""

    http_status = 403


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


def normalize_timestamp(value: Any) -> pd.Timestamp:
    """A reading's timestamp as tz-naive UTC (the canonical frame's convention), or ``ValueError``.

    Dedupe and label matching compare timestamps as text, so every path into the store goes through
    this one function.
    """
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as err:
        # The value is not repeated: this message reaches HTTP clients (POST /feedback must not echo input).
        raise ValueError("timestamp is not a date/time (ISO 8601 expected)") from err
    if pd.isna(ts):
        raise ValueError("timestamp is missing")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


def _timestamp_text(value: Any) -> str:
    return normalize_timestamp(value).isoformat()


def _jsonable(obj: Any) -> Any:
    """Plain JSON data from numpy scalars/arrays and NaN (stored JSON must be standard JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, pd.Timestamp | datetime):
        return obj.isoformat()
    return obj


class ReviewCandidate(BaseModel):
    """One reading the scorer wants a human to look at (what :meth:`ReviewQueue.enqueue` takes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    asset: str = Field(min_length=1)
    timestamp: str
    score: float | None = None
    threshold: float | None = None
    model_version: str = ""
    decision: Literal["review", "alert"]
    #: The explanation the scorer gave: ``[{"sensor": ..., "contribution": ...}, ...]``.
    top_sensors: list[dict[str, Any]] = Field(default_factory=list)
    #: The reading itself (sensor -> value), so a reviewer never depends on the log still existing.
    reading: dict[str, Any] | None = None
    #: Where the reading lives, e.g. ``{"file": "data/inference/date=.../x.parquet", "row": 12}``.
    source: dict[str, Any] | None = None

    @field_validator("timestamp", mode="before")
    @classmethod
    def _canonical_timestamp(cls, value: Any) -> str:
        return _timestamp_text(value)

    @field_validator("top_sensors", "reading", "source", mode="before")
    @classmethod
    def _plain_json(cls, value: Any) -> Any:
        return None if value is None else _jsonable(value)


@dataclass(frozen=True)
class ReviewItem:
    """A queue item as stored (timestamps as ISO text: ``timestamp`` tz-naive UTC, others UTC)."""

    id: int
    created: str
    asset: str
    timestamp: str
    score: float | None
    threshold: float | None
    model_version: str
    decision: str
    top_sensors: list[dict[str, Any]]
    reading: dict[str, Any] | None
    source: dict[str, Any] | None
    origin: str
    status: str
    verdict: str | None
    reviewer: str | None
    note: str | None
    labelled_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VerdictRecord:
    """One label action from the history table (never updated, never deleted)."""

    id: int
    item_id: int
    verdict: str
    reviewer: str
    note: str | None
    at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LabelResult:
    """What a label action did: ``recorded`` is False when it repeated the current verdict."""

    item_id: int
    verdict: str
    reviewer: str
    recorded: bool
    previous_verdict: str | None
    created: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReviewStats:
    """Queue figures for the dashboard and ``plantwatch review stats``.

    ``review_rate`` (queued readings / scored readings) is only known when the caller passes the
    number of scored readings; ``*_confirmed_share`` is the share of labelled items of that decision
    a human called an anomaly (alert precision as humans see it). Times are first verdict minus
    enqueue time, over scorer-queued items only (feedback items are labelled on creation).
    """

    total: int
    open: int
    labelled: int
    by_verdict: dict[str, int]
    by_decision: dict[str, int]
    feedback_items: int
    history_rows: int
    alerts_reviewed: int
    alerts_confirmed: int
    alert_confirmed_share: float | None
    review_confirmed_share: float | None
    median_time_to_review_s: float | None
    mean_time_to_review_s: float | None
    scored_readings: int | None = None
    review_rate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MergeSummary:
    """How many reviewed labels a training run used (printed in the gate report)."""

    labels: int
    matched: int
    changed: int
    unmatched: int
    rows_relabelled: int = 0
    duplicates_dropped: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"reviewed labels: {self.labels} ({self.matched} matched a row, {self.changed} changed the "
            f"source label, {self.unmatched} unmatched)"
        )


@dataclass(frozen=True)
class ItemFacts:
    """The columns :func:`summarize_reviews` needs from one item."""

    decision: str
    origin: str
    status: str
    verdict: str | None
    created: str
    first_verdict_at: str | None = None


# --------------------------------------------------------------------------------------------------
# Validation helpers shared by the queue, the CLI and the feedback core
# --------------------------------------------------------------------------------------------------


def check_verdict(verdict: Any) -> str:
    if not isinstance(verdict, str) or verdict.strip().lower() not in VERDICTS:
        raise ReviewInputError(f"verdict {verdict!r}: expected one of {', '.join(VERDICTS)}")
    return verdict.strip().lower()


def check_status(status: Any) -> str:
    allowed = (*STATUSES, STATUS_ALL)
    if status not in allowed:
        raise ReviewInputError(f"status {status!r}: expected one of {', '.join(allowed)}")
    return str(status)


def _check_text(value: Any, what: str, max_chars: int, *, required: bool) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ReviewInputError(f"{what} is required")
        return None
    if not isinstance(value, str):
        raise ReviewInputError(f"{what} must be text")
    value = value.strip()
    if len(value) > max_chars:
        raise ReviewInputError(f"{what} is longer than {max_chars} characters")
    return value


def _one_line(err: ValidationError, what: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{what}: {loc}: {msg}{more}"


def _as_candidate(item: ReviewCandidate | Mapping[str, Any]) -> ReviewCandidate:
    if isinstance(item, ReviewCandidate):
        return item
    try:
        return ReviewCandidate.model_validate(dict(item))
    except ValidationError as err:
        raise ReviewInputError(_one_line(err, "review item")) from None


def candidates_from_scored(
    scored: pd.DataFrame,
    *,
    model_version: str,
    threshold: float | None,
    sensors: Sequence[str],
    decisions: Iterable[str] = QUEUE_DECISIONS,
    source_file: str | None = None,
) -> list[ReviewCandidate]:
    """The rows of a scored frame (``DetectorBundle.score_frame`` output) that need a human.

    Pure. The service calls this then :meth:`ReviewQueue.enqueue`; ``source_file`` is the inference
    log file the same frame was appended to, so ``source.row`` is the row's position in it.
    """
    wanted = set(decisions) & set(QUEUE_DECISIONS)
    if scored.empty or "decision" not in scored.columns:
        return []
    present = [s for s in sensors if s in scored.columns]
    out: list[ReviewCandidate] = []
    positions = np.flatnonzero(scored["decision"].isin(wanted).to_numpy())
    # One selection + to_dict for all flagged rows: per-row ``iloc`` costs ~0.2 ms each, which an alert
    # storm pays in the service's background thread, competing with request handling.
    columns = [c for c in dict.fromkeys([ASSET, TIMESTAMP, "score", "decision", "top_sensors", *present])
               if c in scored.columns]
    rows = scored.iloc[positions][columns].to_dict("records")
    for pos, row in zip(positions, rows, strict=True):
        source: dict[str, Any] = {"row": int(pos)}
        if source_file is not None:
            source["file"] = source_file
        top = row.get("top_sensors", [])
        out.append(
            _as_candidate(
                {
                    "asset": str(row[ASSET]),
                    "timestamp": row[TIMESTAMP],
                    "score": float(row["score"]) if "score" in scored.columns else None,
                    "threshold": threshold,
                    "model_version": model_version,
                    "decision": row["decision"],
                    "top_sensors": list(top) if top is not None else [],
                    "reading": {s: row[s] for s in present},
                    "source": source,
                }
            )
        )
    return out


# --------------------------------------------------------------------------------------------------
# Pure cores: stats and label merge
# --------------------------------------------------------------------------------------------------


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def summarize_reviews(
    items: Sequence[ItemFacts], history_rows: int, scored_readings: int | None = None
) -> ReviewStats:
    """Queue statistics from per-item facts (pure: the queue reads the rows, this does the sums)."""
    labelled = [i for i in items if i.status == STATUS_LABELLED]
    queued = [i for i in items if i.origin == ORIGIN_SCORING]

    def confirmed(decision: str) -> tuple[int, int]:
        done = [i for i in labelled if i.decision == decision]
        return len(done), sum(i.verdict == VERDICT_ANOMALY for i in done)

    alerts_reviewed, alerts_confirmed = confirmed(DECISION_ALERT)
    reviews_reviewed, reviews_confirmed = confirmed(DECISION_REVIEW)
    waits = [
        _seconds_between(i.created, i.first_verdict_at)
        for i in queued
        if i.first_verdict_at is not None
    ]
    return ReviewStats(
        total=len(items),
        open=sum(i.status == STATUS_OPEN for i in items),
        labelled=len(labelled),
        by_verdict={v: sum(i.verdict == v for i in labelled) for v in VERDICTS},
        by_decision={d: sum(i.decision == d for i in items) for d in DECISIONS},
        feedback_items=sum(i.origin == ORIGIN_FEEDBACK for i in items),
        history_rows=history_rows,
        alerts_reviewed=alerts_reviewed,
        alerts_confirmed=alerts_confirmed,
        alert_confirmed_share=_share(alerts_confirmed, alerts_reviewed),
        review_confirmed_share=_share(reviews_confirmed, reviews_reviewed),
        median_time_to_review_s=statistics.median(waits) if waits else None,
        mean_time_to_review_s=statistics.fmean(waits) if waits else None,
        scored_readings=scored_readings,
        review_rate=_share(len(queued), scored_readings) if scored_readings is not None else None,
    )


def _dedupe_labels(labels: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One label per (asset, timestamp): the latest verdict wins when a reading was labelled twice."""
    order = [c for c in (LABELLED_AT, REVIEW_ITEM_ID) if c in labels.columns]
    ranked = labels.sort_values(order, kind="stable") if order else labels
    kept = ranked.drop_duplicates([ASSET, TIMESTAMP], keep="last")
    return kept, len(labels) - len(kept)


def _key_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """(asset, timestamp) as comparable keys: asset as text, timestamp tz-naive UTC datetime64[ns]."""
    ts = pd.to_datetime(frame[TIMESTAMP])
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    return pd.DataFrame(
        {ASSET: frame[ASSET].astype(str).to_numpy(), TIMESTAMP: ts.astype("datetime64[ns]").to_numpy()}
    )


def merge_review_labels(df: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, MergeSummary]:
    """Reviewed labels override the source ``label`` for matching (asset, timestamp) rows.

    Pure. Returns a copy of ``df`` with ``label`` updated and ``label_source`` set to ``"review"`` on
    matched rows (``"source"`` elsewhere; an existing ``label_source`` is kept on unmatched rows, so
    merging twice gives the same frame). ``labels`` is :meth:`ReviewQueue.reviewed_labels` output
    (at least timestamp, asset, label). Training calls this before splitting, so evaluation and
    threshold calibration see the reviewers' verdicts.
    """
    missing = [c for c in (TIMESTAMP, ASSET, LABEL) if c not in labels.columns]
    if missing:
        raise DataError(f"reviewed labels lack column(s): {', '.join(missing)}")
    for col in (TIMESTAMP, ASSET):
        if col not in df.columns:
            raise DataError(f"frame to relabel lacks column {col!r}")
    bad = ~labels[LABEL].isin(list(VERDICT_LABEL.values()))
    if bad.any():
        raise DataError(f"reviewed labels: {int(bad.sum())} label value(s) are not 0/1")

    out = df.copy()
    if LABEL_SOURCE not in out.columns:
        out[LABEL_SOURCE] = LABEL_FROM_SOURCE
    if labels.empty:
        return out, MergeSummary(labels=0, matched=0, changed=0, unmatched=0)
    if LABEL not in out.columns:
        raise DataError("frame has no label column: reviewed labels only override a labelled source")

    kept, dropped = _dedupe_labels(labels)
    keys = _key_frame(kept).assign(_review=kept[LABEL].astype(int).to_numpy())
    rows = _key_frame(out)
    # A left many-to-one merge keeps the row order and count of ``rows``.
    joined = rows.merge(keys, on=[ASSET, TIMESTAMP], how="left", validate="many_to_one")
    hit = joined["_review"].notna().to_numpy()
    new_values = joined["_review"].to_numpy()[hit].astype(int)
    old_values = out[LABEL].to_numpy()[hit]
    differs = pd.isna(old_values) | (old_values != new_values)
    # Counts are per reviewed reading; a raw frame may repeat a reading on several rows.
    per_reading = rows.loc[hit].assign(_chg=differs).groupby([ASSET, TIMESTAMP])["_chg"].any()

    if out[LABEL].dtype == bool:
        out[LABEL] = out[LABEL].astype("int64")
    where = np.flatnonzero(hit)
    out.iloc[where, out.columns.get_loc(LABEL)] = new_values
    out.iloc[where, out.columns.get_loc(LABEL_SOURCE)] = LABEL_FROM_REVIEW
    summary = MergeSummary(
        labels=len(kept),
        matched=len(per_reading),
        changed=int(per_reading.sum()),
        unmatched=len(kept) - len(per_reading),
        rows_relabelled=int(differs.sum()),
        duplicates_dropped=dropped,
    )
    log.info("%s", summary)
    return out, summary


# --------------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------------


def _quoted(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


_SCHEMA_V1 = (
    f"""
    CREATE TABLE IF NOT EXISTS review_items (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        created       TEXT NOT NULL,
        asset         TEXT NOT NULL,
        timestamp     TEXT NOT NULL,
        score         REAL,
        threshold     REAL,
        model_version TEXT NOT NULL DEFAULT '',
        decision      TEXT NOT NULL CHECK (decision IN ({_quoted(DECISIONS)})),
        top_sensors   TEXT NOT NULL DEFAULT '[]',
        reading       TEXT,
        source        TEXT,
        origin        TEXT NOT NULL CHECK (origin IN ({_quoted(ORIGINS)})),
        status        TEXT NOT NULL DEFAULT '{STATUS_OPEN}' CHECK (status IN ({_quoted(STATUSES)})),
        verdict       TEXT CHECK (verdict IS NULL OR verdict IN ({_quoted(VERDICTS)})),
        reviewer      TEXT,
        note          TEXT,
        labelled_at   TEXT,
        UNIQUE (asset, timestamp, model_version),
        CHECK ((status = '{STATUS_OPEN}') = (verdict IS NULL))
    )
    """,
    f"""
    CREATE TABLE IF NOT EXISTS review_verdicts (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        item_id  INTEGER NOT NULL REFERENCES review_items(id),
        verdict  TEXT NOT NULL CHECK (verdict IN ({_quoted(VERDICTS)})),
        reviewer TEXT NOT NULL,
        note     TEXT,
        at       TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS review_items_status ON review_items(status)",
    "CREATE INDEX IF NOT EXISTS review_items_reading ON review_items(asset, timestamp)",
    "CREATE INDEX IF NOT EXISTS review_verdicts_item ON review_verdicts(item_id)",
)

#: Statements that upgrade a store from schema version ``v`` to ``v + 1``.
_MIGRATIONS: dict[int, tuple[str, ...]] = {0: _SCHEMA_V1}


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _item_from_row(row: sqlite3.Row) -> ReviewItem:
    return ReviewItem(
        id=row["id"],
        created=row["created"],
        asset=row["asset"],
        timestamp=row["timestamp"],
        score=row["score"],
        threshold=row["threshold"],
        model_version=row["model_version"],
        decision=row["decision"],
        top_sensors=json.loads(row["top_sensors"]),
        reading=json.loads(row["reading"]) if row["reading"] is not None else None,
        source=json.loads(row["source"]) if row["source"] is not None else None,
        origin=row["origin"],
        status=row["status"],
        verdict=row["verdict"],
        reviewer=row["reviewer"],
        note=row["note"],
        labelled_at=row["labelled_at"],
    )


def _dump(obj: Any) -> str | None:
    return None if obj is None else json.dumps(obj, allow_nan=False)


class ReviewQueue:
    """The SQLite review queue. Safe to use from several processes at once.

    Each call opens its own short-lived connection (nothing is shared across threads or forks);
    writes are ``BEGIN IMMEDIATE`` transactions, so two writers serialise on SQLite's write lock and
    wait up to ``config.busy_timeout_ms`` rather than failing. ``clock`` exists for tests.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        config: ReviewConfig | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.path = Path(path)
        self.config = config if config is not None else ReviewConfig()
        self._clock = clock
        self._init_schema()

    @classmethod
    def for_project(cls, paths: ProjectPaths, config: ReviewConfig) -> ReviewQueue:
        """The project's queue (``review.db_path`` resolved against the project root)."""
        return cls(paths.resolve(config.db_path), config=config)

    # -- connection plumbing -----------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.config.busy_timeout_ms / _MS_PER_S,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
            )
        except sqlite3.Error as err:
            raise ReviewError(f"review queue {self.path}: {err}") from None
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.config.busy_timeout_ms)}")
            conn.execute("PRAGMA foreign_keys = ON")
            yield conn
        except sqlite3.Error as err:
            raise ReviewError(f"review queue {self.path}: {err}") from None
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back on any error, so a failed call writes nothing."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _now(self) -> str:
        now = self._clock()
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        return now.astimezone(UTC).isoformat(timespec="microseconds")

    def _switch_to_wal(self, conn: sqlite3.Connection) -> str:
        """Set WAL mode, retrying while another process does the same on a brand-new file.

        The switch needs an exclusive lock and SQLite may answer SQLITE_BUSY at once instead of
        calling the busy handler, so two processes creating the store together need this loop.
        Once the file is in WAL mode the pragma is a no-op read and never conflicts.
        """
        deadline = time.monotonic() + self.config.busy_timeout_ms / _MS_PER_S
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as err:
                if err.sqlite_errorname != "SQLITE_BUSY" or time.monotonic() > deadline:
                    raise
                time.sleep(_WAL_RETRY_S)

    def _init_schema(self) -> None:
        """Create or upgrade the tables; idempotent and safe when several processes start together."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ReviewError(f"review queue {self.path}: cannot create folder ({err.strerror})") from None
        with self._connect() as conn:
            mode = self._switch_to_wal(conn)
            if str(mode).lower() != "wal":
                raise ReviewError(f"review queue {self.path}: cannot switch to WAL mode (got {mode})")
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ReviewError(
                    f"review queue {self.path}: schema version {version} is newer than this plantwatch "
                    f"understands ({SCHEMA_VERSION})"
                )
            for v in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[v]:
                    conn.execute(statement)
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                log.debug("review queue %s at schema version %d", self.path, SCHEMA_VERSION)

    # -- writes ------------------------------------------------------------------------------------

    def enqueue(self, items: Iterable[ReviewCandidate | Mapping[str, Any]]) -> builtins.list[int]:
        """Add readings to the queue; returns one id per input, in order.

        The same (asset, timestamp, model_version) is one item: enqueuing it again returns the
        existing id and leaves the item (and any verdict on it) untouched. All inputs are validated
        before anything is written.
        """
        candidates = [_as_candidate(i) for i in items]
        ids: builtins.list[int] = []
        new = 0
        with self._write() as conn:
            now = self._now()
            for c in candidates:
                # Look-up then insert inside one IMMEDIATE transaction: race-free, and unlike
                # INSERT .. ON CONFLICT it burns no AUTOINCREMENT ids (ids stay dense for humans).
                row = conn.execute(
                    "SELECT id FROM review_items WHERE asset = ? AND timestamp = ? AND model_version = ?",
                    (c.asset, c.timestamp, c.model_version),
                ).fetchone()
                if row is not None:
                    ids.append(int(row["id"]))
                    continue
                cur = conn.execute(
                    """
                    INSERT INTO review_items (created, asset, timestamp, score, threshold, model_version,
                                              decision, top_sensors, reading, source, origin)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                    (
                        now,
                        c.asset,
                        c.timestamp,
                        c.score,
                        c.threshold,
                        c.model_version,
                        c.decision,
                        _dump(c.top_sensors),
                        _dump(c.reading),
                        _dump(c.source),
                        ORIGIN_SCORING,
                    ),
                )
                ids.append(int(cur.lastrowid or 0))
                new += 1
        if candidates:
            log.info("review queue: %d item(s) offered, %d new", len(candidates), new)
        return ids

    def _record_verdict(
        self, conn: sqlite3.Connection, item_id: int, verdict: str, by: str, note: str | None
    ) -> LabelResult:
        """Inside an open write transaction: apply a verdict unless it repeats the current one."""
        row = conn.execute(
            "SELECT verdict, reviewer, note FROM review_items WHERE id = ?", (item_id,)
        ).fetchone()
        if row is None:
            raise ReviewItemNotFound(f"review item {item_id} not found")
        previous = row["verdict"]
        repeat = previous == verdict and row["reviewer"] == by and (note is None or note == row["note"])
        if repeat:
            return LabelResult(item_id, verdict, by, recorded=False, previous_verdict=previous)
        at = self._now()
        conn.execute(
            "INSERT INTO review_verdicts (item_id, verdict, reviewer, note, at) VALUES (?, ?, ?, ?, ?)",
            (item_id, verdict, by, note, at),
        )
        conn.execute(
            """
            UPDATE review_items SET status = ?, verdict = ?, reviewer = ?, note = ?, labelled_at = ?
            WHERE id = ?
            """,
            (STATUS_LABELLED, verdict, by, note, at, item_id),
        )
        return LabelResult(item_id, verdict, by, recorded=True, previous_verdict=previous)

    def _checked_label_inputs(self, verdict: Any, by: Any, note: Any) -> tuple[str, str, str | None]:
        checked_by = _check_text(by, "reviewer", self.config.max_name_chars, required=True)
        assert checked_by is not None  # required=True guarantees it
        return (
            check_verdict(verdict),
            checked_by,
            _check_text(note, "note", self.config.max_note_chars, required=False),
        )

    def label(self, item_id: int, verdict: str, by: str, note: str | None = None) -> LabelResult:
        """Record a reviewer's verdict on an item.

        Idempotent: repeating the current verdict by the same reviewer (same or no note) adds no
        history row. Otherwise the history gets a row and the item takes the new verdict, so with
        concurrent reviewers the later verdict wins and both are kept.
        """
        verdict, by, note = self._checked_label_inputs(verdict, by, note)
        with self._write() as conn:
            result = self._record_verdict(conn, int(item_id), verdict, by, note)
        if result.recorded:
            log.info("review item %d labelled %s by %s", result.item_id, verdict, by)
        return result

    def label_reading(
        self,
        asset: str,
        timestamp: Any,
        verdict: str,
        by: str,
        note: str | None = None,
        *,
        model_version: str | None = None,
        decision: str = DECISION_ALERT,
    ) -> LabelResult:
        """Label a reading by (asset, timestamp), creating a labelled item if it was never queued.

        Used for disputed alerts and missed anomalies reported through feedback. Without
        ``model_version`` the newest queued item for that reading is labelled when one exists.
        """
        verdict, by, note = self._checked_label_inputs(verdict, by, note)
        asset_text = _check_text(asset, "asset", self.config.max_name_chars, required=True)
        if decision not in DECISIONS:
            raise ReviewInputError(f"decision {decision!r}: expected one of {', '.join(DECISIONS)}")
        try:
            ts = _timestamp_text(timestamp)
        except ValueError as err:
            raise ReviewInputError(str(err)) from None
        with self._write() as conn:
            query = "SELECT id FROM review_items WHERE asset = ? AND timestamp = ?"
            args: tuple[Any, ...] = (asset_text, ts)
            if model_version is not None:
                query += " AND model_version = ?"
                args += (model_version,)
            row = conn.execute(query + " ORDER BY id DESC LIMIT 1", args).fetchone()
            created = row is None
            if created:
                cur = conn.execute(
                    """
                    INSERT INTO review_items (created, asset, timestamp, model_version, decision, origin)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """,
                    (self._now(), asset_text, ts, model_version or "", decision, ORIGIN_FEEDBACK),
                )
                item_id = int(cur.lastrowid or 0)
            else:
                item_id = int(row["id"])
            result = self._record_verdict(conn, item_id, verdict, by, note)
        if created:
            result = LabelResult(**{**result.to_dict(), "created": True})
        log.info(
            "reading %s@%s labelled %s by %s (item %d%s)",
            asset_text, ts, verdict, by, item_id, ", new" if created else "",
        )
        return result

    # -- reads -------------------------------------------------------------------------------------

    def get(self, item_id: int) -> ReviewItem:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM review_items WHERE id = ?", (int(item_id),)).fetchone()
        if row is None:
            raise ReviewItemNotFound(f"review item {item_id} not found")
        return _item_from_row(row)

    def list(
        self, status: str = STATUS_OPEN, limit: int | None = None, asset: str | None = None
    ) -> builtins.list[ReviewItem]:
        """Items oldest first (a reviewer works the queue in arrival order); ``limit=None`` = all."""
        status = check_status(status)
        if limit is not None and limit < 1:
            raise ReviewInputError(f"limit {limit}: must be at least 1")
        clauses, args = [], []
        if status != STATUS_ALL:
            clauses.append("status = ?")
            args.append(status)
        if asset is not None:
            clauses.append("asset = ?")
            args.append(asset)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT * FROM review_items {where} ORDER BY id LIMIT ?", (*args, limit or -1)
            ).fetchall()
        return [_item_from_row(r) for r in rows]

    def history(self, item_id: int | None = None) -> builtins.list[VerdictRecord]:
        """Label actions in the order they happened (of one item, or all)."""
        with self._connect() as conn:
            if item_id is None:
                rows = conn.execute("SELECT * FROM review_verdicts ORDER BY id").fetchall()
            else:
                if conn.execute("SELECT 1 FROM review_items WHERE id = ?", (item_id,)).fetchone() is None:
                    raise ReviewItemNotFound(f"review item {item_id} not found")
                rows = conn.execute(
                    "SELECT * FROM review_verdicts WHERE item_id = ? ORDER BY id", (item_id,)
                ).fetchall()
        return [VerdictRecord(**dict(r)) for r in rows]

    def stats(self, scored_readings: int | None = None) -> ReviewStats:
        """Queue figures; pass the number of scored readings to get the review rate."""
        with self._connect() as conn:
            conn.execute("BEGIN")  # one consistent snapshot for both reads
            rows = conn.execute(
                """
                SELECT i.decision, i.origin, i.status, i.verdict, i.created, MIN(v.at) AS first_at
                FROM review_items i LEFT JOIN review_verdicts v ON v.item_id = i.id
                GROUP BY i.id
                """
            ).fetchall()
            history_rows = conn.execute("SELECT COUNT(*) FROM review_verdicts").fetchone()[0]
            conn.execute("COMMIT")
        facts = [
            ItemFacts(r["decision"], r["origin"], r["status"], r["verdict"], r["created"], r["first_at"])
            for r in rows
        ]
        return summarize_reviews(facts, int(history_rows), scored_readings)

    def reviewed_labels(self) -> pd.DataFrame:
        """One canonical label per reviewed reading: timestamp, asset, label + provenance columns.

        When a reading was labelled under several model versions, the latest verdict wins.
        """
        with self._connect() as conn:
            rows = conn.execute(
                """
                SELECT timestamp, asset, verdict, reviewer, labelled_at, id
                FROM review_items WHERE status = ? ORDER BY id
                """,
                (STATUS_LABELLED,),
            ).fetchall()
        frame = pd.DataFrame(
            {
                TIMESTAMP: pd.to_datetime([r["timestamp"] for r in rows], format="ISO8601"),
                ASSET: pd.Series([r["asset"] for r in rows], dtype=object),
                LABEL: pd.Series([VERDICT_LABEL[r["verdict"]] for r in rows], dtype="int64"),
                REVIEWER: pd.Series([r["reviewer"] for r in rows], dtype=object),
                LABELLED_AT: pd.to_datetime([r["labelled_at"] for r in rows], format="ISO8601", utc=True)
                .tz_convert("UTC")
                .tz_localize(None),
                REVIEW_ITEM_ID: pd.Series([r["id"] for r in rows], dtype="int64"),
            }
        )
        frame[TIMESTAMP] = frame[TIMESTAMP].astype("datetime64[ns]")
        frame[LABELLED_AT] = frame[LABELLED_AT].astype("datetime64[ns]")
        kept, _ = _dedupe_labels(frame)
        return kept.sort_values([ASSET, TIMESTAMP], kind="stable").reset_index(drop=True)[
            REVIEWED_LABEL_COLUMNS
        ]

    def integrity_check(self) -> str:
        """SQLite's own consistency verdict (``"ok"`` when healthy); used by tests and ops."""
        with self._connect() as conn:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


# --------------------------------------------------------------------------------------------------
# Feedback endpoint core (POST /feedback in the service)
# --------------------------------------------------------------------------------------------------


SQLITE_MAX_INT = 2**63 - 1


class FeedbackPayload(BaseModel):
    """Body of ``POST /feedback``: either ``id`` of a queue item, or ``asset`` + ``timestamp``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    #: SQLite's INTEGER is 64-bit: a larger id must be a 400, not an OverflowError (500) in the lookup.
    id: int | None = Field(
        default=None, ge=1, le=SQLITE_MAX_INT, description="queue item id (from `plantwatch review list`)"
    )
    asset: str | None = Field(default=None, description="asset of a reading that may not be queued")
    timestamp: str | None = Field(default=None, description="ISO time of that reading (UTC if no offset)")
    model_version: str | None = Field(default=None, description="pin the item to a model version")
    decision: Literal["normal", "review", "alert"] = Field(
        default="alert", description="what the service decided for a reading that was never queued"
    )
    verdict: Literal["anomaly", "normal"] = Field(description="the reviewer's verdict")
    by: str = Field(description="reviewer name, kept in the verdict history")
    note: str | None = Field(default=None, description="free-text note")


@dataclass(frozen=True)
class FeedbackResult:
    """What ``POST /feedback`` answers (``to_dict`` is the JSON body)."""

    item_id: int
    verdict: str
    recorded: bool
    created: bool
    status: str = STATUS_LABELLED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_feedback_token(token_provided: str | None, token_expected: str | None) -> None:
    """Refuse feedback unless a token is configured and the caller's matches it (constant time).

    Tokens are never logged or echoed in error messages.
    """
    if not token_expected:
        raise FeedbackDisabled("feedback disabled: no token configured")
    if not token_provided:
        raise FeedbackUnauthorized("feedback refused: missing token")
    if not hmac.compare_digest(token_provided.encode("utf-8"), token_expected.encode("utf-8")):
        raise FeedbackForbidden("feedback refused: wrong token")


def parse_feedback(payload: Any) -> FeedbackPayload:
    """Validate a feedback body into a :class:`FeedbackPayload` (``ReviewInputError`` = 400)."""
    if not isinstance(payload, Mapping):
        raise ReviewInputError("feedback: expected a JSON object")
    try:
        parsed = FeedbackPayload.model_validate(dict(payload))
    except ValidationError as err:
        raise ReviewInputError(_one_line(err, "feedback")) from None
    by_reading = parsed.asset is not None or parsed.timestamp is not None
    if parsed.id is not None and by_reading:
        raise ReviewInputError("feedback: give either id or asset + timestamp, not both")
    if parsed.id is None and (parsed.asset is None or parsed.timestamp is None):
        raise ReviewInputError("feedback: give id, or asset + timestamp")
    return parsed


def submit_feedback(
    queue: ReviewQueue,
    payload: Mapping[str, Any],
    token_provided: str | None,
    token_expected: str | None,
) -> FeedbackResult:
    """The core of ``POST /feedback``: authenticate, validate, label.

    Errors (all ``HttpError``, nothing written): ``FeedbackDisabled`` 403 when no token is
    configured, ``FeedbackUnauthorized`` 401 without a token, ``FeedbackForbidden`` 403 on a wrong
    one, ``ReviewInputError`` 400 on a bad body or verdict, ``ReviewItemNotFound`` 404 on an
    unknown id. A reading that was never queued (asset + timestamp) becomes a labelled item.
    """
    check_feedback_token(token_provided, token_expected)
    fb = parse_feedback(payload)
    if fb.id is not None:
        result = queue.label(fb.id, fb.verdict, fb.by, fb.note)
    else:
        result = queue.label_reading(
            str(fb.asset),
            fb.timestamp,
            fb.verdict,
            fb.by,
            fb.note,
            model_version=fb.model_version,
            decision=fb.decision,
        )
    return FeedbackResult(
        item_id=result.item_id, verdict=result.verdict, recorded=result.recorded, created=result.created
    )


# --------------------------------------------------------------------------------------------------
# I/O helper: how many readings were scored (denominator of the review rate)
# --------------------------------------------------------------------------------------------------


def count_scored_readings(inference_dir: Path) -> int | None:
    """Rows in the inference log's Parquet files (``None`` when there is no log folder).

    Reads only Parquet footers, so it stays cheap on a large log. A file that cannot be read (e.g.
    still being written) is skipped with a warning rather than failing the stats.
    """
    import pyarrow.parquet as pq

    if not inference_dir.is_dir():
        return None
    total = 0
    for file in sorted(inference_dir.rglob("*.parquet")):
        try:
            total += pq.ParquetFile(file).metadata.num_rows
        except (OSError, ValueError) as err:
            log.warning("inference log %s skipped in the count: %s", file, err)
    return total
