"""Payload limit and overload, over real HTTP against the shared server.

Promises: a body one byte over ``serve.max_body_bytes`` or a 50 MB body gets 413 quickly and the
server's memory barely moves; a burst far beyond the concurrency limit gets only 200 or 429/503
(never a hang, never a 500) while /healthz stays fast.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.reliability.conftest import (
    JSON_HEADERS,
    MAX_BODY_BYTES,
    MAX_CONCURRENCY,
    LiveServer,
    body_of,
    readings,
    record_figure,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

BIG_BODY_BYTES = 50 * 1024 * 1024
#: A 413 must come back this fast (it is answered from the headers / first chunks, no parsing).
FAST_413_S = 2.0
#: RSS the server may gain while refusing oversized bodies (it must not buffer 50 MB).
MAX_RSS_GROWTH_BYTES = 20 * 1024 * 1024
BURST_CLIENTS = 12 * MAX_CONCURRENCY
#: The burst is sustained for this long (every client keeps sending), whatever the service's speed,
#: so the /healthz probe samples the server while it is overloaded.
BURST_SECONDS = 3.0
#: ... and bounded in count too: no client sends more than this many requests.
MAX_REQUESTS_PER_CLIENT = 200
BURST_TIMEOUT_S = 60.0
#: Least /healthz samples taken during the burst for its p99 to mean anything.
MIN_HEALTH_SAMPLES = 20
#: /healthz bypasses the concurrency limit; on a loaded 2-core box a second is still "fast" for a probe.
HEALTHZ_P99_S = 1.0


def _padded_body(live: LiveServer, size: int) -> bytes:
    """A JSON body of exactly ``size`` bytes (valid readings + a padding string)."""
    base = {"readings": readings(live.validation, 1), "pad": ""}
    overhead = len(json.dumps(base).encode())
    base["pad"] = "x" * (size - overhead)
    out = json.dumps(base).encode()
    assert len(out) == size
    return out


def test_one_byte_over_the_limit_is_413_fast(live: LiveServer, http: httpx.Client) -> None:
    at_limit = _padded_body(live, MAX_BODY_BYTES)
    over = _padded_body(live, MAX_BODY_BYTES + 1)
    r_at = http.post("/score", content=at_limit, headers=JSON_HEADERS)
    assert r_at.status_code == 400, r_at.text[:300]  # within the limit: parsed, "pad" is refused
    t0 = time.monotonic()
    r = http.post("/score", content=over, headers=JSON_HEADERS)
    took = time.monotonic() - t0
    assert r.status_code == 413 and "exceeds" in r.json()["error"]
    assert took < FAST_413_S
    record_figure("413 for limit+1 byte (s)", f"{took:.3f}", f"413 in < {FAST_413_S} s")


def _raw_post_50mb(live: LiveServer) -> tuple[int, float]:
    """Declare 50 MB, send only the first chunk: the server must answer 413 without reading on."""
    host, port = live.url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        head = (
            f"POST /score HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {BIG_BODY_BYTES}\r\n\r\n"
        ).encode()
        s.sendall(head + b'{"readings": [' + b" " * 65536)
        reply = s.recv(4096)
    status = int(reply.split(b" ", 2)[1])
    return status, time.monotonic() - t0


def test_50mb_body_is_413_fast_and_memory_stays_flat(live: LiveServer, http: httpx.Client) -> None:
    http.post("/score", content=body_of(live, 5), headers=JSON_HEADERS)  # warm
    rss_before = live.rss_bytes()
    status, took_declared = _raw_post_50mb(live)
    assert status == 413 and took_declared < FAST_413_S

    big = b'{"readings": [' + b" " * (BIG_BODY_BYTES - 16) + b"]}"
    t0 = time.monotonic()
    r = http.post("/score", content=big, headers=JSON_HEADERS)  # full 50 MB sent with its length
    took_full = time.monotonic() - t0
    assert r.status_code == 413

    def chunks():  # no Content-Length: counted as it streams
        piece = b" " * (1024 * 1024)
        for _ in range(BIG_BODY_BYTES // len(piece)):
            yield piece

    t0 = time.monotonic()
    r2 = httpx.post(f"{live.url}/score", content=chunks(), headers=JSON_HEADERS, timeout=60)
    took_chunked = time.monotonic() - t0
    assert r2.status_code == 413
    assert max(took_full, took_chunked) < 10 * FAST_413_S
    growth = live.rss_bytes() - rss_before
    assert growth < MAX_RSS_GROWTH_BYTES, f"server RSS grew {growth / 2**20:.1f} MiB"
    assert http.post("/score", content=body_of(live, 2), headers=JSON_HEADERS).status_code == 200
    record_figure("413 for 50 MB, declared length (s)", f"{took_declared:.3f}", f"< {FAST_413_S} s")
    record_figure("413 for 50 MB, chunked (s)", f"{took_chunked:.2f}", "client-side send time included")
    record_figure("server RSS growth over 3 x 50 MB (MiB)", f"{growth / 2**20:.1f}",
                  f"< {MAX_RSS_GROWTH_BYTES / 2**20:.0f} MiB")


def test_burst_over_the_concurrency_limit_gets_200_or_429_and_healthz_stays_fast(
    live: LiveServer,
) -> None:
    body = body_of(live, 100)  # 200 readings: long enough for requests to overlap
    statuses: list[int] = []
    errors: list[str] = []
    health: list[float] = []
    done = threading.Event()

    limits = httpx.Limits(max_connections=BURST_CLIENTS, max_keepalive_connections=BURST_CLIENTS)
    client = httpx.Client(base_url=live.url, timeout=BURST_TIMEOUT_S, limits=limits)

    def one(_: int) -> None:
        stop_at = time.monotonic() + BURST_SECONDS
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() >= stop_at:
                return
            try:
                r = client.post("/score", content=body, headers=JSON_HEADERS)
                statuses.append(r.status_code)
                if r.status_code not in (200, 429, 503):
                    errors.append(r.text[:200])
            except httpx.HTTPError as err:  # a hang becomes a timeout here
                errors.append(repr(err))

    def probe() -> None:
        with httpx.Client(base_url=live.url, timeout=10) as c:
            deadline = time.monotonic() + BURST_TIMEOUT_S
            while not done.is_set() and time.monotonic() < deadline:
                t0 = time.monotonic()
                if c.get("/healthz").status_code != 200:
                    errors.append("healthz not 200")
                health.append(time.monotonic() - t0)
                time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    t0 = time.monotonic()
    with ThreadPoolExecutor(BURST_CLIENTS) as pool:
        list(pool.map(one, range(BURST_CLIENTS)))
    took = time.monotonic() - t0
    done.set()
    prober.join(timeout=15)
    client.close()

    assert not errors, errors[:5]
    assert len(statuses) >= BURST_CLIENTS
    assert set(statuses) <= {200, 429, 503}
    shed = sum(s != 200 for s in statuses)
    assert statuses.count(200) > 0 and shed > 0, "the burst never exceeded the limit"
    health.sort()
    assert len(health) >= MIN_HEALTH_SAMPLES, f"only {len(health)} /healthz samples during the burst"
    p99 = health[min(len(health) - 1, int(0.99 * len(health)))]
    assert p99 < HEALTHZ_P99_S
    record_figure("burst: requests / clients / seconds", f"{len(statuses)} / {BURST_CLIENTS} / {took:.1f}",
                  f"serve.max_concurrency {MAX_CONCURRENCY}")
    record_figure("burst: 5xx-other / hangs", f"{len(errors)}", "0")
    record_figure("burst: shed (429/503) share", f"{shed / len(statuses):.0%}", "only 200 / 429 / 503")
    record_figure("burst: /healthz p99 (ms)", f"{p99 * 1000:.0f}", f"< {HEALTHZ_P99_S * 1000:.0f} ms")
    record_figure("burst: /healthz samples", f"{len(health)}", f">= {MIN_HEALTH_SAMPLES}")
