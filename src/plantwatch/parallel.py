"""Scale-out of independent training work (CV folds, candidate fits) — same results on every path.

Three ways to run a list of calls ``fn(**kwargs)``, chosen from the ``scale:`` block:

* a Dask cluster, when ``scale.dask_address`` or ``$PLANTWATCH_DASK_ADDRESS`` names a scheduler:
  each call becomes a Prefect task run by prefect-dask's ``DaskTaskRunner`` inside a small flow, so
  the runs show up in Prefect (a Prefect API is needed: ``PREFECT_API_URL`` or the temporary local
  server Prefect starts by itself);
* local processes (joblib/loky) when ``scale.local_workers > 1``: no Prefect, no server, which is what
  ``plantwatch train`` and ``dvc repro`` use by default;
* in-process, one after the other, when ``scale.local_workers == 1`` (debugging, tiny data).

Every call must be deterministic given its arguments (seeds are arguments), so all three paths give
identical results; tests check the Dask path against the serial one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from plantwatch.config.train import ScaleConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Environment variable that points training at a Dask scheduler (wins over ``scale.dask_address``).
DASK_ADDRESS_ENV = "PLANTWATCH_DASK_ADDRESS"


def dask_address(scale: ScaleConfig) -> str | None:
    """The scheduler to use, if any (environment first, then params)."""
    return os.environ.get(DASK_ADDRESS_ENV) or scale.dask_address or None


def run_calls(
    fn: Callable[..., T], calls: Sequence[dict[str, Any]], scale: ScaleConfig, *, label: str
) -> list[T]:
    """``[fn(**kw) for kw in calls]``, run where ``scale`` says; results keep the order of ``calls``."""
    if not calls:
        return []
    address = dask_address(scale)
    if address:
        log.info("%s: %d tasks on the Dask cluster at %s via Prefect", label, len(calls), address)
        return _run_on_dask(fn, calls, address, label)
    workers = min(scale.local_workers, len(calls))
    if workers <= 1:
        log.info("%s: %d tasks in-process", label, len(calls))
        return [fn(**kw) for kw in calls]
    from joblib import Parallel, delayed

    log.info("%s: %d tasks on %d local processes", label, len(calls), workers)
    return list(Parallel(n_jobs=workers, backend="loky")(delayed(fn)(**kw) for kw in calls))


def _run_on_dask(fn: Callable[..., T], calls: Sequence[dict[str, Any]], address: str, label: str) -> list[T]:
    """One Prefect flow whose tasks run on the existing cluster; task inputs are not cached or hashed.

    ``NO_CACHE``: big frames as inputs would otherwise be hashed for the cache key on every call.
    """
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect_dask import DaskTaskRunner

    remote = task(name=f"{label}-task", cache_policy=NO_CACHE, persist_result=False)(fn)

    def submit_all() -> list[Any]:
        futures = [remote.submit(**kw) for kw in calls]
        return [f.result() for f in futures]

    runner = DaskTaskRunner(address=address)
    # prefect-dask's runner is typed on its own future class, which prefect's stubs do not accept
    run = flow(name=f"plantwatch-{label}", task_runner=runner,  # type: ignore[arg-type]
               persist_result=False, log_prints=False, validate_parameters=False)(submit_all)
    return list(run())
