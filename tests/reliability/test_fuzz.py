"""Spec-driven fuzzing with schemathesis (v4) against the running service's own /docs.json.

Every POST endpoint gets ``CASES_PER_ENDPOINT`` generated requests over real HTTP: 30 %
schema-conforming (positive), 70 % schema-violating (negative), derandomised so a failure
reproduces. Promises: no response >= 500, no stack trace in any body, and no error body that
echoes a string the client sent (keys or values, not counting names the spec itself publishes).

Generating the cases costs the client most of the CPU (``fuzz_worker``), so the three endpoints
are fuzzed at once in ``WORKERS`` spawned processes, started when the first of these tests runs;
each test then waits (bounded) for its endpoint's outcome and asserts on it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import TOKEN, LiveServer, record_figure
from tests.reliability.fuzz_worker import FuzzOutcome, fuzz_endpoint

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CASES_PER_ENDPOINT = 1000
#: Schema-valid cases cost a full scoring each; invalid ones probe more of the input space.
POSITIVE_SHARE = 0.3
#: Longest run first: /score's valid cases are the expensive ones.
ENDPOINTS = ("/score", "/model", "/feedback")
#: Client processes generating cases (the machine has 2 cores; the server uses them too).
WORKERS = 2
#: Bound on waiting for one endpoint's run (all three take about 1-2 minutes together here).
RUN_TIMEOUT_S = 400.0


@pytest.fixture(scope="module")
def spec(live: LiveServer) -> dict[str, Any]:
    return httpx.get(f"{live.url}/docs.json", timeout=30).json()


Runs = dict[str, Future[FuzzOutcome]]


def _selected(request: pytest.FixtureRequest) -> list[str]:
    """Endpoints whose test this session runs (``-k /model`` must not fuzz /score in the background)."""
    mine = [i for i in request.session.items if isinstance(i, pytest.Function) and i.module is request.module]
    chosen = {i.callspec.params.get("path") for i in mine if hasattr(i, "callspec")}
    return [p for p in ENDPOINTS if p in chosen]


@pytest.fixture(scope="module")
def fuzz_runs(request: pytest.FixtureRequest, live: LiveServer, spec: dict[str, Any]) -> Iterator[Runs]:
    """The selected endpoints' runs, submitted at once to a spawned process pool (cancelled at module end)."""
    pool = ProcessPoolExecutor(max_workers=WORKERS, mp_context=multiprocessing.get_context("spawn"))
    try:
        token = {"/feedback": TOKEN}
        args = (spec, live.url)
        yield {
            path: pool.submit(fuzz_endpoint, *args, path, CASES_PER_ENDPOINT, POSITIVE_SHARE, token.get(path))
            for path in _selected(request)
        }
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_fuzzed_requests_never_5xx_trace_or_echo(fuzz_runs: Runs, path: str) -> None:
    outcome = fuzz_runs[path].result(timeout=RUN_TIMEOUT_S)
    statuses, problems = outcome.statuses, outcome.problems
    total = sum(statuses.values())
    assert total >= CASES_PER_ENDPOINT * 0.9, statuses  # hypothesis may stop early on tiny spaces
    assert not problems, f"{len(problems)} problem(s): " + " | ".join(problems[:5])
    assert any(400 <= s < 500 for s in statuses), statuses  # the negative cases did reach validation
    fives = sum(n for s, n in statuses.items() if s >= 500)
    figure, promise = f"{total} / {fives} / 0", "0 responses >= 500, 0 traces, 0 echoes"
    record_figure(f"fuzz {path}: cases / >=500 / traces+echoes", figure, promise)
