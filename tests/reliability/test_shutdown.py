"""Graceful shutdown: SIGTERM to `bentoml serve` while requests are in flight lets every one of
them complete with 200, and the process exits 0 within a bounded time.

Its own server on the shared project (the shared one must live on), started WITHOUT the token
variable, which also shows that /feedback is closed when no token is configured.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from tests.integration.test_service import START_TIMEOUT_S, free_port, stop_server, up
from tests.reliability.conftest import (
    JSON_HEADERS,
    MAX_CONCURRENCY,
    TOKEN,
    LiveServer,
    body_of,
    launch,
    record_figure,
    server_env,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

IN_FLIGHT = MAX_CONCURRENCY  # all admitted by the project's serve.max_concurrency
#: SIGTERM goes out once the server holds at least this many of them (running + queued).
MIN_IN_PROGRESS = 2
READINGS_PER_ASSET = 200  # 2 assets x 200 = serve.max_readings of the test project: slow enough to overlap
EXIT_TIMEOUT_S = 60.0


def _in_progress(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("bentoml_service_request_in_progress{") and 'endpoint="/score"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_sigterm_with_requests_in_flight_completes_them_and_exits_0(live: LiveServer) -> None:
    env = server_env(live.root)
    env.pop("PLANTWATCH_API_TOKEN")
    port = free_port()
    proc, log_path = launch(live.root, port, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: up(url) or proc.poll() is not None, START_TIMEOUT_S, "the server to start")
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, START_TIMEOUT_S, "readiness")
        fb = {"asset": live.assets[0], "timestamp": "2024-02-01T00:00:00", "verdict": "normal", "by": "x"}
        closed = httpx.post(f"{url}/feedback", json=fb, headers={"authorization": f"Bearer {TOKEN}"})
        assert closed.status_code == 403  # no token configured: feedback is off, not open

        body = body_of(live, READINGS_PER_ASSET)
        results: list[tuple[int, str]] = []
        started = threading.Barrier(IN_FLIGHT + 1)

        def one() -> None:
            started.wait(timeout=30)
            try:
                r = httpx.post(f"{url}/score", content=body, headers=JSON_HEADERS, timeout=EXIT_TIMEOUT_S)
                results.append((r.status_code, "" if r.status_code == 200 else r.text[:200]))
            except httpx.HTTPError as err:
                results.append((0, repr(err)))

        threads = [threading.Thread(target=one) for _ in range(IN_FLIGHT)]
        for t in threads:
            t.start()
        started.wait(timeout=30)
        # in flight = inside the server (BentoML's gauge: one running, the others queued behind it)
        in_progress = wait_for(lambda: (n := _in_progress(url)) >= MIN_IN_PROGRESS and n, 60,
                               "requests in flight", interval=0.02)  # fmt: skip
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)  # what a process manager sends to the main process
        for t in threads:
            t.join(timeout=EXIT_TIMEOUT_S)
        code = proc.wait(timeout=EXIT_TIMEOUT_S)
        took = time.monotonic() - t0
    finally:
        stop_server(proc)
    assert len(results) == IN_FLIGHT
    failed = [r for r in results if r[0] != 200]
    assert not failed, f"{failed} (server log: {log_path.read_text()[-1500:]})"
    assert code == 0, log_path.read_text()[-2000:]
    record_figure("SIGTERM: requests completed (in progress at SIGTERM)",
                  f"{IN_FLIGHT - len(failed)} / {IN_FLIGHT} ({in_progress:.0f})", "all")
    record_figure("SIGTERM: exit code / time to exit (s)", f"{code} / {took:.1f}",
                  f"0 / < {EXIT_TIMEOUT_S:.0f}")
