"""Access: state-changing endpoints need the token, everything binds loopback unless told
otherwise, and the token never reaches a log or a data file.

The service's only state-changing endpoint is POST /feedback (the model changes through the
registry pointer, not over HTTP; POST /model is read-only and is checked to change nothing).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from plantwatch.cli.serve import serve_command
from plantwatch.config import ServeConfig
from plantwatch.orchestration import stop_process_group
from tests.integration.test_service import free_port
from tests.reliability.conftest import JSON_HEADERS, TOKEN, LiveServer, record_figure, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "::1"}
DASHBOARD_START_S = 90.0


def _listening(pids: list[int], port: int) -> list[str]:
    out = []
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        out += [c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    return out


def _feedback(live: LiveServer) -> dict[str, str]:
    return {"asset": live.assets[0], "timestamp": "2024-02-01T00:00:00", "verdict": "normal", "by": "rel"}


def test_feedback_refuses_missing_or_wrong_tokens_and_changes_nothing(
    live: LiveServer, http: httpx.Client
) -> None:
    from plantwatch.review import ReviewQueue

    queue_file = live.root / "data" / "review" / "queue.sqlite"

    def verdicts() -> int:  # verdicts recorded (scoring enqueues items in the background: not counted)
        return len(ReviewQueue(queue_file).history()) if queue_file.exists() else 0

    before = verdicts()
    attempts = {
        "none": {},
        "empty bearer": {"authorization": "Bearer"},
        "wrong": {"authorization": "Bearer not-the-token"},
        "prefix of the token": {"authorization": f"Bearer {TOKEN[:-1]}"},
        "token plus a char": {"authorization": f"Bearer {TOKEN}x"},
        "token in another header": {"x-api-key": TOKEN},
        "token as a query parameter": {},
    }
    refused = 0
    for name, headers in attempts.items():
        url = "/feedback" + (f"?token={TOKEN}" if name == "token as a query parameter" else "")
        r = http.post(url, json=_feedback(live), headers={**JSON_HEADERS, **headers})
        assert r.status_code in (401, 403), f"{name}: {r.status_code} {r.text[:200]}"
        assert TOKEN not in r.text
        refused += 1
    assert verdicts() == before  # nothing was written by a refused request
    ok = http.post("/feedback", json=_feedback(live), headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200, ok.text
    assert verdicts() == before + 1  # ... and the count can move (the check above can fail)
    info_before = http.post("/model").json()
    http.post("/model", json={})
    assert http.post("/model").json()["model_version"] == info_before["model_version"]
    record_figure("unauthorised /feedback attempts refused", f"{refused} / {len(attempts)}", "all")


def test_service_binds_loopback_without_a_host_flag(live: LiveServer) -> None:
    port = int(live.url.rsplit(":", 1)[1])
    addrs = _listening(live.pids(), port)
    assert addrs and set(addrs) <= LOOPBACK, addrs


def test_cli_and_makefile_launch_on_loopback() -> None:
    assert ServeConfig().host == "127.0.0.1"
    argv = serve_command(REPO, ServeConfig().host, ServeConfig().port)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    recipe = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "serve", "dashboards"], cwd=REPO, capture_output=True,
        text=True, timeout=60,
    ).stdout  # fmt: skip
    launches = [line for line in recipe.splitlines() if " serve services" in line or " ui " in line]
    assert len(launches) == 2, recipe
    for line in launches:
        args = shlex.split(line)
        assert args[args.index("--host") + 1] == "127.0.0.1", line


def test_dashboard_as_the_makefile_launches_it_binds_loopback(tmp_path: Path) -> None:
    recipe = subprocess.run(["make", "-n", "-W", "pyproject.toml", "dashboards"], cwd=REPO,
                            capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    line = next(x for x in recipe.splitlines() if " ui " in x)
    port = free_port()
    args = shlex.split(line.replace("${PORT:-8000}", str(port)))
    args[0] = str(REPO / args[0]) if not os.path.isabs(args[0]) else args[0]
    args[args.index("--workspace") + 1] = str(tmp_path / "workspace")
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "DO_NOT_TRACK": "1"})  # fmt: skip
    try:
        wait_for(lambda: _listening([proc.pid], port) or proc.poll() is not None, DASHBOARD_START_S,
                 "evidently ui to listen")  # fmt: skip
        assert proc.poll() is None
        addrs = _listening([proc.pid], port)
        assert addrs and set(addrs) <= LOOPBACK, addrs
    finally:
        stop_process_group(proc, grace_s=20)


def test_the_token_is_in_no_log_or_data_file(live: LiveServer, http: httpx.Client) -> None:
    # make sure the token has travelled: right and wrong uses, then let the log writer flush
    http.post("/feedback", json=_feedback(live), headers={"authorization": f"Bearer {TOKEN}"})
    http.post("/feedback", json=_feedback(live), headers={"authorization": f"Bearer {TOKEN}0"})
    time.sleep(1.0)
    needle = TOKEN.encode()
    scanned = 0
    leaks = []
    for path in live.root.rglob("*"):
        if path.is_file() and ".bentoml" not in path.parts and path.stat().st_size < 50 * 2**20:
            scanned += 1
            if needle in path.read_bytes():
                leaks.append(str(path.relative_to(live.root)))
    assert live.log_path.is_file() and live.log_path.stat().st_size > 0
    assert not leaks, leaks
    record_figure("files scanned for the token (logs, DB, inference log)", f"{scanned}", "0 contain it")
