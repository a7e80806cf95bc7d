"""Spec-driven fuzzing with schemathesis (v4) against the running service's own /docs.json.

Every POST endpoint gets ``CASES_PER_ENDPOINT`` generated requests over real HTTP: 30 %
schema-conforming (positive), 70 % schema-violating (negative), derandomised so a failure
reproduces. Promises: no response >= 500, no stack trace in any body, and no error body that
echoes a string the client sent (keys or values, not counting names the spec itself publishes).
"""

from __future__ import annotations

import collections
import json
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.generation.modes import GenerationMode

from tests.reliability.conftest import TOKEN, LiveServer, record_figure

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CASES_PER_ENDPOINT = 1000
#: Schema-valid cases cost a full scoring each; invalid ones probe more of the input space.
POSITIVE_SHARE = 0.3
ENDPOINTS = ("/score", "/model", "/feedback")
STACK_MARKERS = ("Traceback", 'File "')
#: Shorter client strings appear in bodies by coincidence ("a", "x1"); these are the echo risk.
MIN_ECHO_CHARS = 6


def _strings(obj: Any) -> set[str]:
    """Every string key and value in a JSON-like object."""
    out: set[str] = set()
    if isinstance(obj, str):
        out.add(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out |= _strings(k) | _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            out |= _strings(v)
    return out


def _echoed(body: Any, reply: str, published: str) -> list[str]:
    return [
        s for s in _strings(body) if len(s.strip()) >= MIN_ECHO_CHARS and s not in published and s in reply
    ]


@pytest.fixture(scope="module")
def spec(live: LiveServer) -> dict[str, Any]:
    return httpx.get(f"{live.url}/docs.json", timeout=30).json()


@pytest.mark.parametrize("path", ENDPOINTS)
def test_fuzzed_requests_never_5xx_trace_or_echo(live: LiveServer, spec: dict[str, Any], path: str) -> None:
    schema = schemathesis.openapi.from_dict(spec)
    op = schema[path]["POST"]
    published = json.dumps(spec)
    statuses: collections.Counter[int] = collections.Counter()
    problems: list[str] = []
    auth = {"authorization": f"Bearer {TOKEN}"} if path == "/feedback" else None

    with requests.Session() as session:
        positive = round(CASES_PER_ENDPOINT * POSITIVE_SHARE)
        for mode, examples in ((GenerationMode.POSITIVE, positive),
                               (GenerationMode.NEGATIVE, CASES_PER_ENDPOINT - positive)):  # fmt: skip

            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate],
            )
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                r = case.call(base_url=live.url, session=session, headers=auth, timeout=30)
                statuses[r.status_code] += 1
                text = r.content.decode("utf-8", "replace")
                body = case.body if not isinstance(case.body, bytes) else None
                if r.status_code >= 500:
                    problems.append(f"{r.status_code} for {case.body!r:.300}: {text[:300]}")
                if any(m in text for m in STACK_MARKERS):
                    problems.append(f"stack trace for {case.body!r:.300}: {text[:300]}")
                if r.status_code >= 400 and body is not None and _echoed(body, text, published):
                    problems.append(f"echo of {_echoed(body, text, published)[:3]} in {text[:300]}")

            run()

    total = sum(statuses.values())
    assert total >= CASES_PER_ENDPOINT * 0.9, statuses  # hypothesis may stop early on tiny spaces
    assert not problems, f"{len(problems)} problem(s): " + " | ".join(problems[:5])
    assert any(400 <= s < 500 for s in statuses), statuses  # the negative cases did reach validation
    fives = sum(n for s, n in statuses.items() if s >= 500)
    record_figure(f"fuzz {path}: cases / >=500 / traces+echoes", f"{total} / {fives} / 0",
                  "0 responses >= 500, 0 traces, 0 echoes")
