"""Hand-made malformed requests over real HTTP, each with the exact 4xx it must get.

The service engineer's corpus (tests/integration/test_service.py::malformed_cases, 21 cases on
/score) is reused as is and extended here to more than 40 cases over /score, /model and /feedback:
wrong types at every level, NaN/Infinity literals and strings, duplicates, boundary sizes, odd
encodings and content types, tokens. Each answer must be the expected status, a JSON object
``{"error": str, ...}``, with no stack trace and no echo of the marker string the request carried.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.integration.test_service import MARKER, _reading, malformed_cases
from tests.reliability.conftest import (
    JSON_HEADERS,
    MAX_BODY_BYTES,
    MAX_READINGS,
    TOKEN,
    LiveServer,
    record_figure,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MIN_CASES = 40
AUTH = {**JSON_HEADERS, "authorization": f"Bearer {TOKEN}"}
Case = tuple[str, bytes, dict[str, str], int]


def _j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def extra_cases(live: LiveServer) -> dict[str, Case]:
    """(path, body, headers, expected status) beyond the service engineer's /score corpus."""
    s0, s1 = live.sensors[0], live.sensors[1]
    good = _reading(live)
    one = {"readings": [good]}
    fb = {"asset": live.assets[0], "timestamp": "2024-03-01T00:00:00", "verdict": "anomaly", "by": "rel"}
    return {
        # --- /score: values
        "-Infinity literal": ("/score", _j(one).replace(_j(good[s0]), b"-Infinity", 1), JSON_HEADERS, 400),
        "Infinity as string": ("/score", _j({"readings": [{**good, s0: "Infinity"}]}), JSON_HEADERS, 400),
        "value beyond max_abs_value": ("/score", _j({"readings": [{**good, s0: 1e300}]}), JSON_HEADERS, 400),
        "huge integer literal": ("/score", _j(one).replace(_j(good[s0]), b"1" + b"0" * 400, 1),
                                 JSON_HEADERS, 400),
        "value is an object": ("/score", _j({"readings": [{**good, s1: {"v": MARKER}}]}), JSON_HEADERS, 400),
        "value is a list": ("/score", _j({"readings": [{**good, s1: [1.0]}]}), JSON_HEADERS, 400),
        # --- /score: keys, assets, timestamps
        "unknown key named like the marker": ("/score", _j({"readings": [{**good, MARKER: 1.0}]}),
                                              JSON_HEADERS, 400),
        "asset is a number": ("/score", _j({"readings": [{**good, "asset": 7}]}), JSON_HEADERS, 400),
        "asset is empty": ("/score", _j({"readings": [{**good, "asset": ""}]}), JSON_HEADERS, 400),
        "asset too long": ("/score", _j({"readings": [{**good, "asset": "a" * 129 + MARKER}]}),
                           JSON_HEADERS, 400),
        "asset null": ("/score", _j({"readings": [{**good, "asset": None}]}), JSON_HEADERS, 400),
        "timestamp is a number": ("/score", _j({"readings": [{**good, "timestamp": 1704067200}]}),
                                  JSON_HEADERS, 400),
        "timestamp null": ("/score", _j({"readings": [{**good, "timestamp": None}]}), JSON_HEADERS, 400),
        "timestamp year 1600": ("/score", _j({"readings": [{**good, "timestamp": "1600-01-01T00:00:00"}]}),
                                JSON_HEADERS, 400),
        "duplicate reading": ("/score", _j({"readings": [good, good]}), JSON_HEADERS, 400),
        "readings is an object": ("/score", _j({"readings": good}), JSON_HEADERS, 400),
        "readings is null": ("/score", _j({"readings": None}), JSON_HEADERS, 400),
        "reading is a string": ("/score", _j({"readings": [MARKER]}), JSON_HEADERS, 400),
        "readings at max+1 of valid rows": ("/score", _j({"readings": [good] * (MAX_READINGS + 1)}),
                                            JSON_HEADERS, 400),
        # --- /score: encoding, framing, content type
        "top level is a string": ("/score", _j(MARKER), JSON_HEADERS, 400),
        "top level is null": ("/score", b"null", JSON_HEADERS, 400),
        "trailing garbage": ("/score", _j(one) + b"}" + MARKER.encode(), JSON_HEADERS, 400),
        "invalid UTF-8": ("/score", b'{"readings": [{"asset": "\xff\xfe"}]}', JSON_HEADERS, 400),
        "deeply nested": ("/score", b'{"readings": ' + b"[" * 5000 + b"]" * 5000 + b"}", JSON_HEADERS, 400),
        "text/json content type": ("/score", _j(one), {"content-type": "text/json"}, 415),
        "multipart content type": ("/score", _j(one), {"content-type": "multipart/form-data; boundary=x"},
                                   415),
        "body just over the limit": ("/score", _j({"readings": [good], "pad": "x" * MAX_BODY_BYTES}),
                                     JSON_HEADERS, 413),
        # --- /model
        "model: unknown key": ("/model", _j({"x": 1}), JSON_HEADERS, 400),
        "model: invalid JSON": ("/model", b"{", JSON_HEADERS, 400),
        "model: wrong content type": ("/model", b"{}", {"content-type": "text/plain"}, 415),
        # --- /feedback (authorised: the body itself is wrong)
        "feedback: unknown verdict": ("/feedback", _j({**fb, "verdict": MARKER}), AUTH, 400),
        "feedback: verdict missing": ("/feedback", _j({k: v for k, v in fb.items() if k != "verdict"}),
                                      AUTH, 400),
        "feedback: reviewer name too long": ("/feedback", _j({**fb, "by": "b" * 101}), AUTH, 400),
        "feedback: note too long": ("/feedback", _j({**fb, "note": "n" * 2001}), AUTH, 400),
        "feedback: unknown item id": ("/feedback", _j({"id": 987654321, "verdict": "anomaly", "by": "rel"}),
                                      AUTH, 404),
        "feedback: invalid JSON": ("/feedback", b"{", AUTH, 400),
        "feedback: bad timestamp": ("/feedback", _j({**fb, "timestamp": MARKER}), AUTH, 400),
        # --- /feedback: the token
        "feedback: no token": ("/feedback", _j(fb), JSON_HEADERS, 401),
        "feedback: wrong token": ("/feedback", _j(fb), {**JSON_HEADERS, "authorization": f"Bearer {MARKER}"},
                                  403),
        "feedback: token without scheme": ("/feedback", _j(fb), {**JSON_HEADERS, "authorization": TOKEN},
                                           401),
        "feedback: basic auth scheme": ("/feedback", _j(fb), {**JSON_HEADERS, "authorization": "Basic eDp5"},
                                        401),
    }


def all_cases(live: LiveServer) -> dict[str, Case]:
    theirs = {name: ("/score", body, headers, status) for name, (body, headers, status)
              in malformed_cases(live).items()}  # type: ignore[arg-type]
    mine = extra_cases(live)
    assert not set(theirs) & set(mine)
    return {**theirs, **mine}


def test_malformed_corpus_gets_the_expected_4xx(live: LiveServer, http: httpx.Client) -> None:
    cases = all_cases(live)
    assert len(cases) >= MIN_CASES
    wrong: list[str] = []
    for name, (path, body, headers, expected) in cases.items():
        r = http.post(path, content=body, headers=headers)
        try:
            err = r.json()
        except ValueError:
            err = None
        if r.status_code != expected:
            wrong.append(f"{name}: {r.status_code} (want {expected}) {r.text[:200]}")
        elif not (isinstance(err, dict) and isinstance(err.get("error"), str) and err["error"]):
            wrong.append(f"{name}: error body is not {{'error': str}}: {r.text[:200]}")
        elif MARKER in r.text or TOKEN in r.text or "Traceback" in r.text or 'File "' in r.text:
            wrong.append(f"{name}: body echoes input or shows internals: {r.text[:200]}")
    assert http.get("/readyz").status_code == 200  # none of it hurt the service
    record_figure("malformed corpus: cases / wrong answers", f"{len(cases)} / {len(wrong)}",
                  "every case its expected 4xx, clean JSON error")
    assert not wrong, "\n".join(wrong)
