"""Ingest: read every configured source plus the landing folder into one canonical frame.

Pure core: :func:`normalise` (one raw frame + the ``data:`` contract -> canonical frame). It never
drops a row and never loses a bad value silently: a sensor reading that is not a number, or a
timestamp that cannot be parsed, becomes NaN/NaT *and* is written into the :data:`TYPE_ERRORS`
marker column, so validation quarantines that row with the reason ``wrong type`` instead of
mistaking it for an ordinary gap.

I/O shell: :func:`ingest` reads ``data.sources`` (CSV, CSV.gz, Parquet; globs allowed) and every
data file in ``data.landing_dir`` and writes ``data.interim_path``.

Landing files and replays: the interim file is rebuilt from scratch on every run (sources + all
landing files), so re-running ingest can never append the same data twice. A landing file is
identified by the sha256 of its bytes; a file whose content was already ingested (the same delivery
dropped again, under the same or another name) is skipped as a replay. The record of what was
ingested is ``landing_manifest.json`` next to the interim file (name, sha256, rows, first seen); a
content hash keeps the name under which it was first seen, so a later re-delivery never displaces it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from plantwatch import schema
from plantwatch.config import DataConfig
from plantwatch.errors import DataError
from plantwatch.paths import ProjectPaths

log = logging.getLogger(__name__)

#: Marker column: per row, ``None`` or "column=<raw value>; ..." for every value that was not of the
#: contract's type (non-numeric sensor reading, unparseable timestamp). Validation quarantines these.
TYPE_ERRORS = "type_errors"
#: File suffixes ingest can read.
SUPPORTED_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".parquet", ".pq")
#: Text that means "no reading" rather than "wrong type" when found in a numeric column.
NULL_TOKENS: frozenset[str] = frozenset({"", "nan", "na", "n/a", "null", "none", "-nan"})
#: Landing manifest file name (written next to ``data.interim_path``).
LANDING_MANIFEST = "landing_manifest.json"
#: Longest raw value quoted in a type-error marker (keeps the marker readable).
_MAX_RAW_CHARS = 40
_GLOB_CHARS = frozenset("*?[")


# ---------------------------------------------------------------------------------------------
# pure core
# ---------------------------------------------------------------------------------------------


def _append_marker(marker: pd.Series, bad: pd.Series, column: str, raw: pd.Series) -> pd.Series:
    """Add ``column=<raw value>`` to the marker of every row where ``bad`` is true."""
    if not bad.any():
        return marker
    text = column + "=" + raw[bad].astype(str).str.slice(0, _MAX_RAW_CHARS).map(repr)
    previous = marker[bad]
    out = marker.copy()
    out[bad] = np.where(previous.isna(), text, previous.astype(str) + "; " + text)
    return out


def coerce_sensors(frame: pd.DataFrame, sensors: Iterable[str]) -> pd.DataFrame:
    """Sensors as float64; values that are not numbers become NaN and are recorded in ``TYPE_ERRORS``.

    Shared by ingest and validation (a frame handed straight to validation, e.g. by monitoring, gets
    the same treatment). Columns that are missing are left missing: the suite reports them. An
    existing ``TYPE_ERRORS`` column is extended, never overwritten.
    """
    out = frame.copy()
    marker = (
        out[TYPE_ERRORS].astype(object).where(out[TYPE_ERRORS].notna(), None)
        if TYPE_ERRORS in out
        else pd.Series(None, index=out.index, dtype=object)
    )
    for name in sensors:
        if name not in out:
            continue
        col = out[name]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            out[name] = col.astype("float64")
            continue
        numeric = pd.to_numeric(col, errors="coerce")
        text = col.astype(str).str.strip().str.lower()
        bad = numeric.isna() & col.notna() & ~text.isin(NULL_TOKENS)
        if pd.api.types.is_bool_dtype(col):
            bad = pd.Series(True, index=col.index) & col.notna()
            numeric = pd.Series(np.nan, index=col.index)
        marker = _append_marker(marker, bad, name, col)
        out[name] = numeric.astype("float64")
    out[TYPE_ERRORS] = marker.astype(object)
    return out


def parse_timestamps(values: pd.Series, fmt: str) -> tuple[pd.Series, pd.Series]:
    """Parse to naive-UTC ``datetime64[ns]``; returns (timestamps, mask of unparseable non-null values).

    Aware values are converted to UTC; naive ones are taken as UTC already. Numbers are not guessed
    at (epoch seconds vs milliseconds is ambiguous) and count as unparseable.
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        ts = values.dt.tz_convert("UTC").dt.tz_localize(None)
    elif pd.api.types.is_datetime64_any_dtype(values):
        ts = values
    elif pd.api.types.is_numeric_dtype(values):
        ts = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    else:
        text = values.astype(object).where(values.notna(), None)
        ts = pd.to_datetime(text, utc=True, errors="coerce", format=fmt)
        retry = ts.isna() & values.notna()
        if retry.any() and fmt == "ISO8601":  # e.g. "01/02/2024 10:00" — accepted, but slow: only the misses
            ts[retry] = pd.to_datetime(text[retry], utc=True, errors="coerce", format="mixed")
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    ts = ts.astype("datetime64[ns]")
    bad = ts.isna() & values.notna()
    if pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values):
        bad &= ~values.astype(str).str.strip().str.lower().isin(NULL_TOKENS)
    return ts, bad


def required_columns(data: DataConfig) -> list[str]:
    """Raw (source-side) column names a source must have."""
    cols = [data.timestamp_column]
    if data.asset_column is not None:
        cols.append(data.asset_column)
    return cols + data.sensor_names


def normalise(frame: pd.DataFrame, data: DataConfig) -> pd.DataFrame:
    """One raw frame -> the canonical frame (see docs/ARCHITECTURE.md), row count unchanged.

    Renames key columns to ``plantwatch.schema`` names, parses timestamps, fills ``asset`` for
    single-asset data, coerces sensors to float64 (recording non-numbers in ``TYPE_ERRORS``), keeps
    ``label`` and the configured passthrough columns, drops everything else, and sorts by
    (asset, timestamp) — a stable sort, so equal keys keep their source order.
    Raises ``DataError`` when a required column is missing.
    """
    missing = [c for c in required_columns(data) if c not in frame.columns]
    if missing:
        raise DataError(f"missing required column(s): {', '.join(missing)}")
    out = pd.DataFrame(index=frame.index)
    ts, bad_ts = parse_timestamps(frame[data.timestamp_column], data.timestamp_format)
    out[schema.TIMESTAMP] = ts
    if data.asset_column is None:
        out[schema.ASSET] = data.default_asset
    else:
        asset = frame[data.asset_column]
        out[schema.ASSET] = asset.astype(str).where(asset.notna(), None).astype(object)
    for name in data.sensor_names:
        out[name] = frame[name]
    if data.label_column is not None and data.label_column in frame.columns:
        label = pd.to_numeric(frame[data.label_column], errors="coerce")
        out[schema.LABEL] = label.astype("int64") if label.notna().all() else label
    for name in data.passthrough_columns:
        if name in frame.columns:
            out[name] = frame[name]
    out[TYPE_ERRORS] = None
    out[TYPE_ERRORS] = _append_marker(
        out[TYPE_ERRORS], bad_ts, schema.TIMESTAMP, frame[data.timestamp_column]
    )
    out = coerce_sensors(out, data.sensor_names)
    out = out.sort_values([schema.ASSET, schema.TIMESTAMP], kind="stable", na_position="last")
    return out.reset_index(drop=True)


def concat_canonical(frames: list[pd.DataFrame], data: DataConfig) -> pd.DataFrame:
    """Several canonical frames -> one, re-sorted by (asset, timestamp) (stable: source order wins)."""
    if not frames:
        raise DataError("no input rows: every source was empty or skipped")
    out = pd.concat(frames, ignore_index=True)
    out = out.sort_values([schema.ASSET, schema.TIMESTAMP], kind="stable", na_position="last")
    return out.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# I/O shell
# ---------------------------------------------------------------------------------------------


def _is_supported(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in SUPPORTED_SUFFIXES)


def resolve_sources(sources: list[str], paths: ProjectPaths) -> list[Path]:
    """Expand globs (relative to the project root); a missing file or an empty glob is a DataError."""
    files: list[Path] = []
    for entry in sources:
        target = paths.resolve(entry)
        if _GLOB_CHARS & set(entry):
            matches = sorted(Path(m) for m in glob.glob(str(target), recursive=True))
            matches = [m for m in matches if m.is_file()]
            if not matches:
                raise DataError(f"source pattern matches no file: {entry}")
            files.extend(matches)
        elif not target.is_file():
            raise DataError(f"source file not found: {entry}")
        else:
            files.append(target)
    unsupported = [f for f in files if not _is_supported(f)]
    if unsupported:
        raise DataError(f"unsupported source type (use {', '.join(SUPPORTED_SUFFIXES)}): {unsupported[0]}")
    return files


def read_table(path: Path) -> pd.DataFrame:
    """Read one CSV / CSV.gz / Parquet file; any reader failure is a one-line DataError."""
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        # low_memory=False: one dtype per column (mixed chunks would hide type errors).
        return pd.read_csv(path, low_memory=False)
    except FileNotFoundError:
        raise DataError(f"source file not found: {path}") from None
    except (ValueError, OSError, pd.errors.ParserError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"cannot read {path.name}: {first}") from None


def read_source(path: Path, data: DataConfig) -> pd.DataFrame:
    """Read and normalise one file; a contract violation names the file."""
    frame = read_table(path)
    try:
        return normalise(frame, data)
    except DataError as err:
        raise DataError(f"{path.name}: {err}") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class LandingFile:
    path: Path
    sha256: str
    replay_of: str | None  # name of the file whose identical content was ingested instead


def plan_landing(landing_dir: Path, manifest: dict[str, dict]) -> list[LandingFile]:
    """Every data file in the landing folder, each distinct content ingested once.

    ``manifest`` maps sha256 -> {"file": name first seen, ...} from the previous run: while that file
    still exists it keeps ownership of its content, so a re-delivered copy (whatever it is called)
    is the one skipped. Only the folder itself is scanned (sub-folders are free for archives or
    other datasets); hidden files are ignored (editors, partial uploads).
    """
    if not landing_dir.is_dir():
        return []
    rel_names = sorted(
        p.name
        for p in landing_dir.iterdir()
        if p.is_file() and _is_supported(p) and not p.name.startswith(".")
    )
    hashes = {name: file_sha256(landing_dir / name) for name in rel_names}
    owner = {
        sha: entry["file"] for sha, entry in manifest.items() if hashes.get(str(entry.get("file"))) == sha
    }
    plan: list[LandingFile] = []
    for name in rel_names:
        sha = hashes[name]
        first = owner.setdefault(sha, name)
        plan.append(LandingFile(landing_dir / name, sha, None if first == name else first))
    return plan


@dataclass
class IngestSummary:
    """What ``ingest`` read: rows per source, replays skipped, where it wrote."""

    rows: dict[str, int] = field(default_factory=dict)
    skipped_replays: dict[str, str] = field(default_factory=dict)
    type_errors: int = 0
    output: str = ""

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def _load_manifest(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())["files"]
        return {e["sha256"]: e for e in entries}
    except (ValueError, KeyError, TypeError):
        log.warning("landing manifest %s is unreadable; treating every landing file as new", path)
        return {}


def ingest(data: DataConfig, paths: ProjectPaths) -> tuple[pd.DataFrame, IngestSummary]:
    """Read sources + landing files, write ``data.interim_path`` and the landing manifest."""
    summary = IngestSummary()
    frames: list[pd.DataFrame] = []
    for path in resolve_sources(data.sources, paths):
        frame = read_source(path, data)
        summary.rows[_display(path, paths)] = len(frame)
        frames.append(frame)

    # The drop zone always exists: DVC tracks it as a persistent output of this stage (dvc.yaml).
    paths.resolve(data.landing_dir).mkdir(parents=True, exist_ok=True)
    interim = paths.resolve(data.interim_path)
    manifest_path = interim.parent / LANDING_MANIFEST
    previous = _load_manifest(manifest_path)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    entries: list[dict] = []
    for item in plan_landing(paths.resolve(data.landing_dir), previous):
        name = _display(item.path, paths)
        if item.replay_of is not None:
            summary.skipped_replays[name] = item.replay_of
            log.warning("landing file %s repeats the content of %s: skipped (replay)", name, item.replay_of)
            continue
        frame = read_source(item.path, data)
        summary.rows[name] = len(frame)
        frames.append(frame)
        rel = item.path.name
        first_seen = previous.get(item.sha256, {}).get("first_seen", now)
        entries.append({"file": rel, "sha256": item.sha256, "rows": len(frame), "first_seen": first_seen})

    result = concat_canonical(frames, data)
    summary.type_errors = int(result[TYPE_ERRORS].notna().sum())
    interim.parent.mkdir(parents=True, exist_ok=True)
    tmp = interim.with_name(interim.name + ".tmp")
    result.to_parquet(tmp, index=False)
    tmp.replace(interim)
    if entries or manifest_path.exists():
        manifest_path.write_text(json.dumps({"files": entries}, indent=2) + "\n")
    summary.output = _display(interim, paths)
    log.debug("ingested %d rows from %d file(s) into %s", len(result), len(summary.rows), summary.output)
    return result, summary


def _display(path: Path, paths: ProjectPaths) -> str:
    """A path relative to the project root when it is inside it (stable in logs and manifests)."""
    try:
        return path.resolve().relative_to(paths.root).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------
# Landing: monitored production batches become training data for the next retrain
# ---------------------------------------------------------------------------------------------
def to_source_frame(canonical: pd.DataFrame, data: DataConfig, *, default_label: int = 0) -> pd.DataFrame:
    """Canonical rows -> the data contract's own column names (the inverse of ``normalise``).

    Why: a landing file must read like any other source, so ``ingest`` treats it the same way.
    Production rows carry no ground truth; they get ``default_label`` (normal — the same convention
    as an unlabelled official training part) unless the frame has a ``label`` already; reviewers'
    verdicts override it later through the review queue.
    """
    out = pd.DataFrame({data.timestamp_column: canonical[schema.TIMESTAMP].to_numpy()})
    if data.asset_column is not None:
        out[data.asset_column] = canonical[schema.ASSET].astype(str).to_numpy()
    for name in data.sensor_names:
        out[name] = canonical[name].to_numpy(dtype="float64")
    if data.label_column is not None:
        if schema.LABEL in canonical.columns and canonical[schema.LABEL].notna().all():
            out[data.label_column] = canonical[schema.LABEL].astype("int64").to_numpy()
        else:
            out[data.label_column] = default_label
    return out


def land_batch(canonical: pd.DataFrame, data: DataConfig, paths: ProjectPaths, name: str) -> Path:
    """Write a validated batch into the landing folder (atomically) so the next ``ingest`` takes it.

    Idempotent by name: landing the same batch twice rewrites one file, and ingest's content
    manifest skips replays anyway.
    """
    landing = paths.resolve(data.landing_dir)
    landing.mkdir(parents=True, exist_ok=True)
    target = landing / f"{name}.parquet"
    tmp = landing / f".{name}.parquet.tmp"
    to_source_frame(canonical, data).to_parquet(tmp, index=False)
    os.replace(tmp, target)
    log.info("landed %d rows as %s for the next retrain", len(canonical), _display(target, paths))
    return target
