"""One endpoint's schemathesis run, as a plain function a worker process can execute.

Why a separate process per endpoint: generating the cases (hypothesis + schemathesis) costs the
client far more CPU than the server spends answering them (about 34 s of client CPU against 6 s
of server CPU for /score), and that work holds the GIL, so threads would not overlap it. The
test module starts the endpoints' runs in spawned worker processes and asserts on the outcomes.
Everything here is deterministic per endpoint (``derandomize=True``), as in a sequential run.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.generation.modes import GenerationMode

STACK_MARKERS = ("Traceback", 'File "')
#: Shorter client strings appear in bodies by coincidence ("a", "x1"); these are the echo risk.
MIN_ECHO_CHARS = 6
REQUEST_TIMEOUT_S = 30


@dataclass
class FuzzOutcome:
    """What one endpoint's run saw: status counts and every broken promise, described."""

    path: str
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)


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


def fuzz_endpoint(
    spec: dict[str, Any], base_url: str, path: str, cases: int, positive_share: float, token: str | None
) -> FuzzOutcome:
    """POST ``cases`` generated requests to ``path``: ``positive_share`` schema-valid, the rest invalid."""
    op = schemathesis.openapi.from_dict(spec)[path]["POST"]
    published = json.dumps(spec)
    outcome = FuzzOutcome(path)
    auth = {"authorization": f"Bearer {token}"} if token else None

    with requests.Session() as session:
        positive = round(cases * positive_share)
        plan = ((GenerationMode.POSITIVE, positive), (GenerationMode.NEGATIVE, cases - positive))
        for mode, examples in plan:

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
                r = case.call(base_url=base_url, session=session, headers=auth, timeout=REQUEST_TIMEOUT_S)
                outcome.statuses[r.status_code] += 1
                text = r.content.decode("utf-8", "replace")
                body = case.body if not isinstance(case.body, bytes) else None
                if r.status_code >= 500:
                    outcome.problems.append(f"{r.status_code} for {case.body!r:.300}: {text[:300]}")
                if any(m in text for m in STACK_MARKERS):
                    outcome.problems.append(f"stack trace for {case.body!r:.300}: {text[:300]}")
                if r.status_code >= 400 and body is not None and _echoed(body, text, published):
                    outcome.problems.append(f"echo of {_echoed(body, text, published)[:3]} in {text[:300]}")

            run()
    return outcome
