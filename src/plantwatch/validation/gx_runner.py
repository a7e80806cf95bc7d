"""Great Expectations plumbing: one context, one pandas data source, one checkpoint per suite.

Two kinds of context:

* :meth:`GXRunner.for_project` — a *file* context in ``<root>/gx`` whose expectation store points
  at ``<root>/expectations`` (suites live as reviewable JSON there, without GX's random store-id
  file), validation results in ``gx/uncommitted/``, and a Data Docs site in ``reports/data_docs/``.
  Progress bars are off (they would spam CI logs and DVC output).
* :meth:`GXRunner.ephemeral` — in memory, for callers that only want the verdict (tests, the
  monitoring loop validating each new batch).

Row-level quarantine relies on result format ``COMPLETE`` with ``unexpected_index_column_names``
= [``row_id``]: GX then lists exactly the failing rows' keys.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import great_expectations as gx
from filelock import FileLock
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.checkpoint.actions import ValidationAction
from great_expectations.core import ExpectationSuiteValidationResult
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.base import DataContextConfig, ProgressBarsConfig
from great_expectations.exceptions import DataContextError, InvalidExpectationConfigurationError

from plantwatch import schema
from plantwatch.validation import expectations as _custom  # noqa: F401  (registers custom expectations)
from plantwatch.validation.suite import SuitePlan, expectation_key

log = logging.getLogger(__name__)

DATASOURCE = "plantwatch"
ASSET = "telemetry"
BATCH_DEFINITION = "whole_frame"
DOCS_SITE = "local_site"
#: How long a second ``plantwatch validate`` on the same project waits for the first.
LOCK_TIMEOUT_S = 600.0

#: ``row_id`` is the frame's *named index* (not a column): GX then lists failing rows straight from
#: the index, and with ``exclude_unexpected_values`` as one ``{"row_id": [...]}`` entry. With a
#: ``row_id`` column instead, GX builds one dict per failing row and normalises every column name
#: for each (minutes for a batch where a few sensors are constant).
RESULT_FORMAT: dict[str, Any] = {
    "result_format": "COMPLETE",
    "unexpected_index_column_names": [schema.ROW_ID],
    "exclude_unexpected_values": True,
    "return_unexpected_index_query": False,
}


def _store(base_directory: str, *, suppress_id: bool = False, class_name: str) -> dict[str, Any]:
    backend: dict[str, Any] = {"class_name": "TupleFilesystemStoreBackend", "base_directory": base_directory}
    if suppress_id:
        backend["suppress_store_backend_id"] = True
    return {"class_name": class_name, "store_backend": backend}


def _no_progress_bars() -> ProgressBarsConfig:
    return ProgressBarsConfig(globally=False, metric_calculations=False)


def project_context_config(docs_max_runs: int) -> DataContextConfig:
    """The file context's configuration; paths are relative to ``<root>/gx``."""
    return DataContextConfig(
        config_version=4,
        plugins_directory=None,
        config_variables_file_path=None,
        stores={
            # The committed suites: no .ge_store_backend_id file in expectations/.
            "expectations_store": _store(
                "../expectations/", suppress_id=True, class_name="ExpectationsStore"
            ),
            "validation_results_store": _store(
                "uncommitted/validations/", suppress_id=True, class_name="ValidationResultsStore"
            ),
            "checkpoint_store": _store("checkpoints/", suppress_id=True, class_name="CheckpointStore"),
            "validation_definition_store": _store(
                "validation_definitions/", suppress_id=True, class_name="ValidationDefinitionStore"
            ),
        },
        expectations_store_name="expectations_store",
        validation_results_store_name="validation_results_store",
        checkpoint_store_name="checkpoint_store",
        data_docs_sites={
            DOCS_SITE: {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": "../reports/data_docs/",
                },
                "site_index_builder": {
                    "class_name": "DefaultSiteIndexBuilder",
                    "validation_results_limit": docs_max_runs,
                },
            }
        },
        progress_bars=_no_progress_bars(),
    )


class GXRunner:
    """Validates pandas frames against plantwatch suites in one GX context."""

    def __init__(self, context: Any, *, lock_path: Path | None = None, data_docs: bool = False) -> None:
        self.context = context
        self.data_docs = data_docs
        self._lock = FileLock(str(lock_path)) if lock_path is not None else None
        self._checkpoints: dict[str, tuple[str, Any]] = {}  # suite name -> (version, checkpoint)
        source = context.data_sources.add_or_update_pandas(DATASOURCE)
        try:
            asset = source.get_asset(ASSET)
        except LookupError:
            asset = source.add_dataframe_asset(ASSET)
        try:
            self._batch_definition = asset.get_batch_definition(BATCH_DEFINITION)
        except (KeyError, LookupError):
            self._batch_definition = asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)

    @classmethod
    def ephemeral(cls) -> GXRunner:
        """In-memory context: nothing is written (no suite file, no results store, no Data Docs)."""
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = _no_progress_bars()
        return cls(context)

    @classmethod
    def for_project(cls, root: Path, *, data_docs: bool, docs_max_runs: int) -> GXRunner:
        """File context in ``root/gx`` (created on first use; the config is rewritten every time so a
        stale or hand-edited gx/great_expectations.yml can never point the stores elsewhere)."""
        gx_dir = root / "gx"
        gx_dir.mkdir(parents=True, exist_ok=True)
        (root / "expectations").mkdir(exist_ok=True)
        context = gx.get_context(
            mode="file", project_root_dir=root, project_config=project_context_config(docs_max_runs)
        )
        return cls(context, lock_path=gx_dir / ".plantwatch.lock", data_docs=data_docs)

    def sync_suite(self, plan: SuitePlan) -> gx.ExpectationSuite:
        """Store the suite; idempotent: unchanged expectations keep their IDs, so the file stays equal.

        GX's own ``add_or_update`` means to keep IDs but compares expectations *including* their
        ``id`` (a fresh one has none), so it re-issues every ID. We carry the stored IDs over first.
        """
        stored = self._stored_ids(plan.name)
        for exp in plan.suite.expectations:
            exp.id = stored.get(expectation_key(exp))
        return self.context.suites.add_or_update(plan.suite)

    def _stored_ids(self, name: str) -> dict[str, str]:
        try:
            existing = self.context.suites.get(name=name)
        except (DataContextError, InvalidExpectationConfigurationError, ValueError):
            return {}  # none yet, or written by an older plantwatch with other expectation types
        return {expectation_key(e): e.id for e in existing.expectations if e.id}

    def validate(self, frame: Any, plan: SuitePlan, *, run_name: str) -> ExpectationSuiteValidationResult:
        """Run the suite on ``frame`` (which must carry ``row_id``) through a checkpoint."""
        if self._lock is None:
            return self._validate(frame, plan, run_name)
        with self._lock.acquire(timeout=LOCK_TIMEOUT_S):
            return self._validate(frame, plan, run_name)

    def _checkpoint(self, plan: SuitePlan) -> Any:
        """The suite's checkpoint, set up once per runner and suite version.

        Setting up is the expensive part of a small validation (GX compares every expectation to
        the stored one to keep IDs stable), so a long-lived runner (the monitoring loop) pays it once;
        one suite name holds one version at a time in the store.
        """
        cached = self._checkpoints.get(plan.name)
        if cached is None or cached[0] != plan.version:  # another version of the suite replaces this one
            suite = self.sync_suite(plan)
            definition = self.context.validation_definitions.add_or_update(
                gx.ValidationDefinition(
                    name=f"{plan.name}-whole-frame", data=self._batch_definition, suite=suite
                )
            )
            actions: list[ValidationAction] = (
                [UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])] if self.data_docs else []
            )
            checkpoint = self.context.checkpoints.add_or_update(
                gx.Checkpoint(
                    name=f"{plan.name}-checkpoint",
                    validation_definitions=[definition],
                    actions=actions,
                    result_format=RESULT_FORMAT,
                )
            )
            self._checkpoints[plan.name] = (plan.version, checkpoint)
        return self._checkpoints[plan.name][1]

    def _validate(self, frame: Any, plan: SuitePlan, run_name: str) -> ExpectationSuiteValidationResult:
        checkpoint = self._checkpoint(plan)
        result = checkpoint.run(
            batch_parameters={"dataframe": frame}, run_id=RunIdentifier(run_name=run_name)
        )
        (suite_result,) = result.run_results.values()
        return suite_result

    def docs_index(self) -> Path | None:
        """Path of the Data Docs index page, when a site was built."""
        for url in self.context.get_docs_sites_urls(site_name=DOCS_SITE, only_if_exists=True):
            link = url.get("site_url") or ""
            if link.startswith("file://"):
                return Path(link.removeprefix("file://"))
        return None
