"""Soak benchmark: steady load on the scoring service for a bounded time; does anything leak?

Run: ``.venv/bin/python bench/reliability_soak.py`` (default 5 minutes; ``--seconds 60`` to
shorten). Without ``--url`` it builds a throw-away project (one small model, as bench/serving.py
does), starts `bentoml serve` on 127.0.0.1 and stops it afterwards.

Load: ``--clients`` threads posting /score back to back (``--readings`` readings per request); every
``BAD_EVERY``-th request is malformed (400 expected), so error paths soak too. Every ``--sample``
seconds the server's process tree is sampled: RSS and open file descriptors (files, sockets,
pipes). Printed: a table over time, and the growth from the end of warm-up (first
``WARMUP_SHARE`` of the run) to the end. tests/reliability/test_soak.py runs ``soak()`` for 30 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from rich.console import Console
from rich.table import Table

import plantwatch  # noqa: F401  (telemetry off first)

log = logging.getLogger("bench.reliability_soak")
console = Console(width=120)

JSON = {"content-type": "application/json"}
#: One request in this many is malformed on purpose (a 400 must not leak either).
BAD_EVERY = 10
#: Share of the run treated as warm-up (caches, allocator arenas, first log files).
WARMUP_SHARE = 0.2
REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Sample:
    t: float
    rss_bytes: int
    open_fds: int
    requests: int


@dataclass
class SoakResult:
    seconds: float
    samples: list[Sample]
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def _at_warmup(self) -> Sample:
        cut = self.samples[0].t + WARMUP_SHARE * (self.samples[-1].t - self.samples[0].t)
        return next(s for s in self.samples if s.t >= cut)

    @property
    def rss_growth_bytes(self) -> int:
        return self.samples[-1].rss_bytes - self._at_warmup().rss_bytes

    @property
    def fd_growth(self) -> int:
        return max(s.open_fds for s in self.samples) - self._at_warmup().open_fds

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def unexpected(self) -> int:
        """Answers other than 200 (good body) / 400 (the deliberately bad ones), plus client errors."""
        return sum(n for s, n in self.statuses.items() if s not in (200, 400)) + len(self.errors)


def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_usage(pid: int) -> tuple[int, int]:
    """(RSS bytes, open fds) summed over the process and its children (workers)."""
    rss = fds = 0
    for p in process_tree(pid):
        try:
            rss += p.memory_info().rss
            fds += p.num_fds()
        except psutil.NoSuchProcess:
            continue
    return rss, fds


def listener_pid(port: int) -> int:
    """The topmost process listening on ``port`` (the `bentoml serve` arbiter)."""
    pids = {c.pid for c in psutil.net_connections(kind="inet") if c.laddr and c.laddr.port == port
            and c.status == psutil.CONN_LISTEN and c.pid}  # fmt: skip
    if not pids:
        raise SystemExit(f"nothing listens on port {port}")
    return min(pids, key=lambda p: psutil.Process(p).create_time())


def soak(
    url: str,
    server_pid: int,
    good_body: bytes,
    *,
    seconds: float,
    clients: int = 2,
    sample_s: float = 1.0,
    on_sample: Callable[[Sample], None] | None = None,
) -> SoakResult:
    """Load ``url`` for ``seconds`` (bounded in time) and sample the server's usage meanwhile."""
    bad_body = b'{"readings": [{"timestamp": "nope"}]}'
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    deadline = time.monotonic() + seconds

    def client() -> None:
        n = 0
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as c:
            while not stop.is_set() and time.monotonic() < deadline:
                n += 1
                body = bad_body if n % BAD_EVERY == 0 else good_body
                try:
                    status = c.post("/score", content=body, headers=JSON).status_code
                    with lock:
                        statuses[status] += 1
                except httpx.HTTPError as err:
                    with lock:
                        errors.append(repr(err))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    t0 = time.monotonic()
    samples: list[Sample] = []
    for t in threads:
        t.start()
    try:
        while time.monotonic() < deadline:
            rss, fds = tree_usage(server_pid)
            with lock:
                done = sum(statuses.values())
            sample = Sample(time.monotonic() - t0, rss, fds, done)
            samples.append(sample)
            if on_sample is not None:
                on_sample(sample)
            time.sleep(min(sample_s, max(0.0, deadline - time.monotonic())))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=REQUEST_TIMEOUT_S + 5)
    rss, fds = tree_usage(server_pid)
    samples.append(Sample(time.monotonic() - t0, rss, fds, sum(statuses.values())))
    return SoakResult(time.monotonic() - t0, samples, statuses, errors)


def print_table(result: SoakResult, rows: int = 12) -> None:
    table = Table(title=f"soak: {result.requests} requests in {result.seconds:.0f} s")
    for col in ("t (s)", "requests", "RSS (MiB)", "open fds"):
        table.add_column(col, justify="right")
    step = max(1, len(result.samples) // rows)
    picked = result.samples[::step]
    if picked[-1] is not result.samples[-1]:
        picked.append(result.samples[-1])
    for s in picked:
        table.add_row(f"{s.t:.0f}", str(s.requests), f"{s.rss_bytes / 2**20:.1f}", str(s.open_fds))
    console.print(table)
    summary = Table(title="growth after warm-up")
    for col in ("RSS growth (MiB)", "fd growth", "req/s", "200", "400", "unexpected"):
        summary.add_column(col, justify="right")
    summary.add_row(
        f"{result.rss_growth_bytes / 2**20:+.1f}", f"{result.fd_growth:+d}",
        f"{result.requests / result.seconds:.1f}", str(result.statuses[200]), str(result.statuses[400]),
        str(result.unexpected),
    )  # fmt: skip
    console.print(summary)


def _importable_repo() -> None:
    """Run as a script, ``bench/`` is on sys.path but the repo root (for ``bench.serving``) is not."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)


def _body(root: Path, readings: int) -> bytes:
    from bench.serving import body_of, request_rows
    from plantwatch.config import load_params
    from plantwatch.registry import Registry

    params = load_params(root / "params.yaml")
    _, bundle = Registry(root, params.registry).load_production()
    rows = request_rows(params, list(bundle.assets), readings)
    return body_of(rows, params.data.sensor_names)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300.0, help="length of the run (default 300)")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--readings", type=int, default=100, help="readings per request")
    ap.add_argument("--sample", type=float, default=2.0, help="seconds between samples")
    ap.add_argument("--url", help="an already running service (with --pid and --body)")
    ap.add_argument("--pid", type=int, help="server pid for --url (default: who listens on its port)")
    ap.add_argument("--body", type=Path, help="a JSON /score body for --url")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.url:
        if args.body is None:
            raise SystemExit("--url needs --body (a valid /score request for that service)")
        pid = args.pid or listener_pid(int(args.url.rsplit(":", 1)[1]))
        body = args.body.read_bytes()
        json.loads(body)
        result = soak(args.url, pid, body, seconds=args.seconds, clients=args.clients, sample_s=args.sample)
        print_table(result)
        return
    _importable_repo()
    from bench.serving import running_server, throwaway_project

    with tempfile.TemporaryDirectory(prefix="pw-bench-soak-") as tmp:
        root = Path(tmp) / "proj"
        os.environ["BENTOML_HOME"] = str(root / ".bentoml")
        throwaway_project(root)
        body = _body(root, args.readings)
        with running_server(root, inference_log=True) as url:
            pid = listener_pid(int(url.rsplit(":", 1)[1]))
            result = soak(url, pid, body, seconds=args.seconds, clients=args.clients, sample_s=args.sample)
        print_table(result)


if __name__ == "__main__":
    main()
