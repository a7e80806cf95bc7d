"""Shared fixtures of the reliability suite: ONE real `bentoml serve` for the whole session, and a
figures board every test writes its measured number to (printed as a table at the end of the run,
copied into README "Reliability figures").

The server project reuses the service engineer's helpers (tests/integration/test_service.py): same
tiny trained bundles, same small request limits, so the malformed-request corpus there and the one
here run against identical settings. On top, its params set a small ``serve.max_concurrency``
(the operator's knob, passed to BentoML's ``traffic`` option) so overload can be tested.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import psutil
import pytest
import yaml

from plantwatch.config import load_params
from plantwatch.registry import Registry
from tests.helpers import wait_for
from tests.integration.test_service import (
    BENTOML,
    MAX_BODY_BYTES,
    MAX_READINGS,
    REPO,
    START_TIMEOUT_S,
    TOKEN,
    free_port,
    make_project,
    readings,
    register,
    stop_server,
    train_bundles,
    up,
)

__all__ = ["MAX_BODY_BYTES", "MAX_READINGS", "TOKEN", "readings", "wait_for"]

JSON_HEADERS = {"content-type": "application/json"}
#: In-flight API requests the test server admits; the rest must get 429/503 at once.
MAX_CONCURRENCY = 4
START_ATTEMPTS = 2

# ------------------------------------------------------------------------------------------
# Figures board
# ------------------------------------------------------------------------------------------

FIGURES: dict[str, tuple[str, str]] = {}


def record_figure(key: str, value: Any, promise: str) -> None:
    """Store one measured figure (shown at the end of the run and copied into the README table)."""
    FIGURES[key] = (str(value), promise)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("Reliability figures")
    width = max(len(k) for k in FIGURES)
    for key, (value, promise) in FIGURES.items():
        terminalreporter.write_line(f"{key:<{width}}  {value:>14}   {promise}")


# ------------------------------------------------------------------------------------------
# Server
# ------------------------------------------------------------------------------------------


@dataclass
class LiveServer:
    url: str
    root: Path
    proc: subprocess.Popen
    log_path: Path
    registry: Registry
    tags: dict[str, str]
    validation: pd.DataFrame
    sensors: list[str]
    assets: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def pids(self) -> list[int]:
        """The serve process and every worker it spawned."""
        parent = psutil.Process(self.proc.pid)
        return [parent.pid, *(c.pid for c in parent.children(recursive=True))]

    def rss_bytes(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def open_files(self) -> int:
        """Open file descriptors of the serve process tree (files + sockets + pipes)."""
        total = 0
        for pid in self.pids():
            try:
                total += psutil.Process(pid).num_fds()
            except psutil.NoSuchProcess:
                continue
        return total


def server_env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PLANTWATCH_ROOT": str(root),
        "BENTOML_HOME": str(root / ".bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "PLANTWATCH_API_TOKEN": TOKEN,
    }


def limit_concurrency(root: Path, max_concurrency: int) -> None:
    """Set ``serve.max_concurrency`` in the project's params.yaml (read by the server at start)."""
    path = root / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["serve"]["max_concurrency"] = max_concurrency
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def launch(root: Path, port: int, env: dict[str, str], *extra: str) -> tuple[subprocess.Popen, Path]:
    """`bentoml serve` WITHOUT --host (the service must bind 127.0.0.1 by itself), own process group."""
    log_path = root / f"server-{port}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [BENTOML, "serve", "services.service:Detector", "--port", str(port), "--working-dir", str(REPO),
         *extra],  # fmt: skip
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, log_path


def start_live_server(root: Path) -> LiveServer:
    """Train + register two bundles in ``root``, start the server, promote one, wait until ready."""
    params = load_params(root / "params.yaml")
    registry = Registry(root, params.registry, bentoml_home=root / ".bentoml")
    artifacts, validation = train_bundles(root)
    tags = {kind: register(registry, path, kind) for kind, path in artifacts.items()}
    for attempt in range(START_ATTEMPTS):
        port = free_port()
        proc, log_path = launch(root, port, server_env(root))
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda u=url, p=proc: up(u) or p.poll() is not None, START_TIMEOUT_S, "the server to start")
        # exit code 0 before serving = stopped from outside (seen on the shared machine): try again
        if proc.poll() != 0 or attempt == START_ATTEMPTS - 1:
            break
    try:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        registry.promote(tags["custom"], reason="reliability suite")
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, START_TIMEOUT_S, "readiness")
    except BaseException:
        stop_server(proc)
        raise
    bundle = registry.load(tags["custom"])
    return LiveServer(
        url, root, proc, log_path, registry, tags, validation, list(bundle.sensors), list(bundle.assets)
    )


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The one shared server of the suite (tests must leave production on ``tags['custom']``)."""
    root = make_project(tmp_path_factory.mktemp("rel") / "proj")
    limit_concurrency(root, MAX_CONCURRENCY)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLANTWATCH_ROOT", str(root))
        mp.setenv("BENTOML_HOME", str(root / ".bentoml"))
        server = start_live_server(root)
        try:
            yield server
        finally:
            stop_server(server.proc)


@pytest.fixture(scope="session")
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=30) as c:
        yield c


RESTARTS: list[str] = []


@pytest.fixture(autouse=True)
def _revive_shared_server(request: pytest.FixtureRequest) -> None:
    """The machine is shared: if the session server was stopped between tests (seen: a SIGTERM from
    outside, clean exit 0), start it again on the same project so one outside kill does not fail
    every later test. A server that dies DURING a test still fails that test (its requests fail);
    every restart is logged in the server log folder and shown in the figures."""
    if "live" not in request.fixturenames:
        return
    live: LiveServer = request.getfixturevalue("live")
    code = live.proc.poll()
    if code is None:
        return
    RESTARTS.append(f"before {request.node.name}: server had exited with {code}")
    record_figure("shared server restarts (stopped from outside)", str(len(RESTARTS)), "0 expected")
    port = free_port()
    proc, log_path = launch(live.root, port, server_env(live.root))
    live.proc, live.log_path, live.url = proc, log_path, f"http://127.0.0.1:{port}"
    wait_for(lambda: up(live.url) or proc.poll() is not None, START_TIMEOUT_S, "the server to restart")
    wait_for(lambda: httpx.get(f"{live.url}/readyz").status_code == 200, START_TIMEOUT_S, "readiness")
    if "http" in request.fixturenames:
        request.getfixturevalue("http").base_url = live.url


def fast_readings(live: LiveServer, n: int) -> list[dict[str, Any]]:
    """Same rows and order as ``test_service.readings`` (first ``n`` per asset, interleaved), built
    column-wise (that helper re-reads params.yaml per row, too slow for big bodies)."""
    parts = [g.head(n) for _, g in live.validation.groupby("asset", sort=True)]
    rows = pd.concat(parts).sort_values(["timestamp", "asset"], kind="stable")
    stamps = [t.isoformat() for t in rows["timestamp"]]
    out = pd.DataFrame({"timestamp": stamps, "asset": rows["asset"].tolist()})
    for s in live.sensors:
        out[s] = rows[s].astype(object).where(rows[s].notna(), None).tolist()
    return out.to_dict(orient="records")


def body_of(live: LiveServer, n: int) -> bytes:
    """A valid /score body: the first ``n`` readings of each asset."""
    return json.dumps({"readings": fast_readings(live, n)}).encode()


def sigterm_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)


def elapsed(t0: float) -> float:
    return time.monotonic() - t0
