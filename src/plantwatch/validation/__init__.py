"""Data validation: the raw-telemetry GX suite, quarantine, ledger and Data Docs.

Python entry points (used by the CLI, the flows and the monitoring loop alike):

* :func:`validate_frame` (pure-ish core): frame + ``DataConfig`` + ``ValidateConfig`` ->
  :class:`ValidationOutcome` (clean frame, quarantined frame with reasons, status, summary).
* :func:`build_suite`: the generated suite and its version hash.
* :func:`record` / :func:`validate_path`: the I/O shell (quarantine files, ledger, reports).
"""

from plantwatch.validation import expectations as _expectations  # noqa: F401  (registers custom GX types)
from plantwatch.validation.core import (
    REASON,
    ExpectationReport,
    ValidationIntegrityError,
    ValidationOutcome,
    content_batch_id,
    prepare_frame,
    validate_frame,
)
from plantwatch.validation.gx_runner import GXRunner
from plantwatch.validation.records import (
    append_ledger,
    clean_path,
    ledger_line,
    quarantine_path,
    read_ledger,
    record,
    report_path,
    sync_suite,
    validate_path,
)
from plantwatch.validation.suite import SuitePlan, build_expectations, build_suite, suite_version

__all__ = [
    "REASON",
    "ExpectationReport",
    "GXRunner",
    "SuitePlan",
    "ValidationIntegrityError",
    "ValidationOutcome",
    "append_ledger",
    "build_expectations",
    "build_suite",
    "clean_path",
    "content_batch_id",
    "ledger_line",
    "prepare_frame",
    "quarantine_path",
    "read_ledger",
    "record",
    "report_path",
    "suite_version",
    "sync_suite",
    "validate_frame",
    "validate_path",
]
