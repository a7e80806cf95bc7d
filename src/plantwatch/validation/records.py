"""I/O shell of the validate stage: quarantine files, the ledger, reports, clean output.

Files (relative to the project root):

* ``data/processed/clean.parquet`` — the accepted rows of the batch (removed when a batch is
  rejected, so no later stage can train on a stale clean file by accident);
* ``data/quarantine/<batch-id>.parquet`` — quarantined rows with ``row_id``, ``batch_id``, ``reason``;
* ``data/quarantine/ledger.jsonl`` — append-only, one line per validation run;
* ``reports/validation/<batch-id>.json`` — summary + every expectation's verdict;
* ``reports/data_docs/`` — the GX Data Docs site (built by the checkpoint).

The quarantine folder and the ledger are an audit trail that grows across runs, which is why they
are NOT DVC outputs (DVC deletes a stage's outputs before re-running it).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from plantwatch.config import Params
from plantwatch.errors import DataError
from plantwatch.paths import ProjectPaths
from plantwatch.validation.core import ValidationIntegrityError, ValidationOutcome, validate_frame
from plantwatch.validation.gx_runner import GXRunner
from plantwatch.validation.suite import SuitePlan, build_suite

log = logging.getLogger(__name__)

CLEAN_FILE = "clean.parquet"


def clean_path(paths: ProjectPaths) -> Path:
    return paths.processed / CLEAN_FILE


def report_path(paths: ProjectPaths, batch_id: str) -> Path:
    return paths.reports / "validation" / f"{batch_id}.json"


def quarantine_path(paths: ProjectPaths, batch_id: str) -> Path:
    return paths.quarantine / f"{batch_id}.parquet"


def project_runner(params: Params, paths: ProjectPaths) -> GXRunner:
    return GXRunner.for_project(
        paths.root, data_docs=params.validate_.data_docs, docs_max_runs=params.validate_.data_docs_max_runs
    )


def sync_suite(params: Params, paths: ProjectPaths) -> SuitePlan:
    """Write ``expectations/<suite>.json`` from params (idempotent) without validating anything."""
    plan = build_suite(params.data, params.validate_)
    project_runner(params, paths).sync_suite(plan)
    return plan


def read_batch(path: Path) -> pd.DataFrame:
    """A batch to validate: a canonical Parquet file (normally ``data.interim_path``)."""
    if not path.is_file():
        raise DataError(f"input not found: {path} (run `plantwatch ingest` first?)")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path.name}: {str(err).splitlines()[0]}") from None


def _atomic_parquet(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)


def ledger_line(outcome: ValidationOutcome, source: str, when: datetime) -> dict[str, Any]:
    line: dict[str, Any] = {
        "batch_id": outcome.batch_id,
        "time": when.isoformat(timespec="seconds"),
        "source": source,
    }
    summary = outcome.summary()
    line.update({k: summary[k] for k in ("rows_in", "rows_clean", "rows_quarantined", "reasons")})
    line.update(
        {
            "warnings": summary["warnings"],
            "suite_name": outcome.suite_name,
            "suite_version": outcome.suite_version,
            "status": outcome.status,
            "expectations_evaluated": outcome.expectations_evaluated,
        }
    )
    if line["rows_in"] != line["rows_clean"] + line["rows_quarantined"]:
        raise ValidationIntegrityError(f"ledger line for {outcome.batch_id} does not add up: {line}")
    return line


def append_ledger(ledger: Path, line: dict[str, Any]) -> None:
    """One JSON object per line in a single O_APPEND write: concurrent runs interleave whole lines."""
    ledger.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(line, sort_keys=False, default=str) + "\n").encode()
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_ledger(ledger: Path) -> list[dict[str, Any]]:
    if not ledger.exists():
        return []
    return [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]


def record(
    outcome: ValidationOutcome,
    paths: ProjectPaths,
    *,
    source: str,
    write_clean: bool = True,
    docs_index: Path | None = None,
) -> dict[str, Any]:
    """Persist an outcome: quarantine file, report, ledger line and (optionally) the clean file."""
    when = datetime.now(UTC)
    line = ledger_line(outcome, source, when)
    if outcome.rows_quarantined:
        _atomic_parquet(outcome.quarantined, quarantine_path(paths, outcome.batch_id))
    clean_note = None
    if write_clean:
        target = clean_path(paths)
        clean_note = target.relative_to(paths.root).as_posix()
        if outcome.accepted:
            _atomic_parquet(outcome.clean, target)
        elif target.exists():
            target.unlink()  # never leave an older batch's clean file for training to pick up
            clean_note = f"removed {clean_note} (batch rejected)"
        else:
            clean_note = None
    report = {
        **line,
        "batch_failures": outcome.batch_failures,
        "quarantine_file": (
            quarantine_path(paths, outcome.batch_id).relative_to(paths.root).as_posix()
            if outcome.rows_quarantined
            else None
        ),
        "clean_file": clean_note,
        "data_docs": docs_index.relative_to(paths.root).as_posix() if docs_index else None,
        "expectations": [r.as_dict() for r in outcome.expectations],
    }
    target_report = report_path(paths, outcome.batch_id)
    target_report.parent.mkdir(parents=True, exist_ok=True)
    target_report.write_text(json.dumps(report, indent=2, default=str) + "\n")
    append_ledger(paths.ledger, line)
    return line


def validate_path(path: Path, params: Params, paths: ProjectPaths) -> ValidationOutcome:
    """``plantwatch validate``: validate one file with the project's GX context and record everything."""
    frame = read_batch(path)
    runner = project_runner(params, paths)
    outcome = validate_frame(frame, params.data, params.validate_, runner=runner)
    try:
        source = path.resolve().relative_to(paths.root).as_posix()
    except ValueError:
        source = str(path)
    record(outcome, paths, source=source, docs_index=runner.docs_index() if runner.data_docs else None)
    return outcome
