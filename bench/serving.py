"""Scoring-service benchmark: HTTP latency/throughput beside in-process scoring of the same rows.

Run: ``.venv/bin/python bench/serving.py`` (about 1-2 minutes; ``--quick`` for a smoke run).
``--project DIR`` benchmarks an existing project's production model (e.g. after ``make demo``);
without it a throw-away project gets a small model trained on simulator data by the pipeline's own
``fit_final``, registered and promoted.

Workloads (one client, sequential requests over one keep-alive connection, bodies serialised
once up front). The client is Python's ``http.client``, the lightest HTTP client at hand, so the
figures are the service's and not the client library's; the 1,000-row workload is also run with
``httpx`` (about 1 ms more per request of the client's own work) to show what a heavier client costs:

* 1-reading requests: p50/p99 latency (goal: p50 <= 20 ms);
* 100-reading requests: p50/p99 latency;
* 1,000-row requests: rows/s (goal: >= 70 % of in-process throughput), sequentially (one client:
  every request waits for the previous answer, so client and transport time add up) and from
  ``CONCURRENT_CLIENTS`` clients at once (throughput under overlapping requests, one worker
  process; a known limit today: README "Scoring service").

"in-process" is ``plantwatch.scoring.score_checked(bundle, frame)`` on the same rows in the same
run: the input checks and the model, as ``plantwatch score`` runs them on a file's frame and the
service on a request's; the service cannot beat it. "ratio" is HTTP rows/s over it. The
second table splits the service's own per-request work (strict parsing, frame building, JSON out)
so a regression shows where it comes from. Figures vary with machine load: the lead runs the final
ones on a quiet machine.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

import plantwatch  # noqa: F401  (telemetry off first)
from plantwatch import schema, scoring, serving
from plantwatch.config import Params, load_params
from plantwatch.registry import Evidence, Registry

REPO = Path(__file__).resolve().parents[1]
BENTOML = str(Path(sys.executable).parent / "bentoml")
JSON = {"content-type": "application/json"}
START_TIMEOUT_S = 180.0
console = Console(width=140)
log = logging.getLogger("bench.serving")


@dataclass(frozen=True)
class Workload:
    name: str
    rows: int
    requests: int


#: The 1,000-row workload once more, from this many lean clients at once (throughput under load).
CONCURRENT_CLIENTS = 2
#: The 1,000-row workload again, sent with httpx instead of the lean client.
HTTPX_WORKLOAD = "1,000 (httpx client)"


def workloads(quick: bool) -> list[Workload]:
    scale = 4 if quick else 1
    return [
        Workload("1 reading", 1, 200 // scale),
        Workload("100 readings", 100, 60 // scale),
        Workload("1,000 readings", 1000, 30 // scale),
    ]


# --------------------------------------------------------------------------------------------
# Project with a production model
# --------------------------------------------------------------------------------------------


#: The throw-away model's fleet: simulator seed, assets and days of training history.
FLEET_SEED = 11
FLEET_ASSETS = 2
FLEET_DAYS = 2.0
SECONDS_PER_DAY = 86400


def throwaway_project(root: Path) -> None:
    """params.yaml from the repo + one small custom model, registered and promoted."""
    from plantwatch.bundle import save_bundle
    from plantwatch.simulate import simulate_fleet
    from plantwatch.training import Settings, fit_final

    root.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["simulate"].update(seed=FLEET_SEED, assets=FLEET_ASSETS, days=FLEET_DAYS)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(root / "params.yaml")
    fleet = simulate_fleet(params.simulate, params.data)
    cut = fleet[schema.TIMESTAMP].quantile(0.7)
    train, validation = fleet[fleet[schema.TIMESTAMP] <= cut], fleet[fleet[schema.TIMESTAMP] > cut]
    s = Settings(data=params.data, features=params.features, train=params.train, rules=params.rules)
    bundle = fit_final("custom", {}, train, validation, s, sorted(fleet[schema.ASSET].unique()))
    artifact = root / "models" / "custom.skops"
    save_bundle(bundle, artifact)
    registry = Registry(root, params.registry, bentoml_home=root / ".bentoml")
    evidence = Evidence(
        kind="custom", train_info={}, holdout={}, cv={}, gates={"passed": True, "chosen": "custom"}
    )
    registry.promote(registry.register(artifact, evidence).tag, reason="bench")


def request_rows(params: Params, assets: list[str], n: int) -> pd.DataFrame:
    """n rows of the project's simulated fleet right after its training period, interleaved by
    asset like a gateway batch: the traffic the model was built for (a realistic decision mix, so
    the review-queue side work is realistic too). A model whose assets the simulator does not
    produce gets simulator rows renamed to its assets (expect mostly alerts then)."""
    from plantwatch.simulate import simulate_fleet

    per_asset = -(-n // len(assets))
    extra_days = per_asset * params.data.interval_s / SECONDS_PER_DAY
    fleet = simulate_fleet(
        params.simulate, params.data, assets=len(assets), days=params.simulate.days + extra_days
    )
    names = sorted(fleet[schema.ASSET].unique())
    if set(names) != set(assets):
        log.warning("model assets are not the simulator's: renaming (scores will be mostly alerts)")
        fleet[schema.ASSET] = fleet[schema.ASSET].map(dict(zip(names, assets, strict=True)))
    fresh = fleet[
        fleet[schema.TIMESTAMP] >= fleet[schema.TIMESTAMP].min() + pd.Timedelta(days=params.simulate.days)
    ]
    rows = fresh.sort_values([schema.TIMESTAMP, schema.ASSET], kind="stable").head(n)
    return rows[[schema.TIMESTAMP, schema.ASSET, *params.data.sensor_names]].reset_index(drop=True)


def body_of(rows: pd.DataFrame, sensors: list[str]) -> bytes:
    items = []
    for r in rows.itertuples(index=False):
        item: dict[str, Any] = {"timestamp": r.timestamp.isoformat(), "asset": r.asset}
        for s in sensors:
            v = getattr(r, s)
            item[s] = None if pd.isna(v) else float(v)
        items.append(item)
    return json.dumps({"readings": items}).encode()


# --------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(root: Path, inference_log: bool) -> Iterator[str]:
    """`bentoml serve` on 127.0.0.1 for the project; stopped (its process group) on exit."""
    if not inference_log:
        raw = yaml.safe_load((root / "params.yaml").read_text())
        raw["serve"]["inference_log"] = False
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    port = _free_port()
    env = {**os.environ, "PLANTWATCH_ROOT": str(root), "BENTOML_HOME": str(root / ".bentoml")}
    out = (root / "bench-server.log").open("wb")
    proc = subprocess.Popen(
        [BENTOML, "serve", "services.service:Detector", "--host", "127.0.0.1", "--port", str(port),
         "--working-dir", str(REPO)],
        cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited; see {root / 'bench-server.log'}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server not ready in time")
            time.sleep(0.25)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


class LeanClient:
    """POSTs over one keep-alive ``http.client`` connection (reconnects if the server closed it)."""

    def __init__(self, url: str, timeout: float) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port, self.timeout = parsed.hostname or "127.0.0.1", parsed.port, timeout
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        try:
            self.conn.request("POST", path, body=body, headers=JSON)
            r = self.conn.getresponse()
            return r.status, r.read()
        except (http.client.HTTPException, ConnectionError):
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            raise

    def close(self) -> None:
        self.conn.close()


@contextmanager
def gc_paused() -> Iterator[None]:
    """The bench process's own garbage collector off while timing (as in ``timeit``): its full
    collections, over everything this process imported, would otherwise land in random samples of
    both columns. The server keeps its own GC settings (``serve:`` block)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def timings(call: Callable[[], Any], n: int, warmup: int = 3) -> list[float]:
    """Seconds per call, after ``warmup`` untimed calls, with the bench's GC paused."""
    for _ in range(warmup):
        call()
    out = []
    with gc_paused():
        for _ in range(n):
            t = time.perf_counter()
            call()
            out.append(time.perf_counter() - t)
    return out


def concurrent_timings(url: str, body: bytes, clients: int, per_client: int) -> tuple[list[float], float]:
    """``clients`` lean clients (own connection, own thread) each POST ``body`` ``per_client`` times,
    all at once: per-request latencies and the wall time of the whole run (the service's
    throughput under overlapping requests; README "Scoring service", known limit)."""
    conns = [LeanClient(url, timeout=120) for _ in range(clients)]
    for c in conns:  # warm every connection
        c.post("/score", body)
    latencies: list[float] = []
    barrier = threading.Barrier(clients + 1)

    def one(client: LeanClient) -> None:
        barrier.wait()
        for _ in range(per_client):
            t = time.perf_counter()
            status, content = client.post("/score", body)
            latencies.append(time.perf_counter() - t)
            if status != 200:
                raise SystemExit(f"concurrent: HTTP {status} {content[:200]!r}")

    threads = [threading.Thread(target=one, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    try:
        with gc_paused():
            barrier.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
    finally:
        for c in conns:
            c.close()
    return latencies, wall


def p(values: list[float], q: float) -> float:
    return float(np.quantile(np.asarray(values), q))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def service_parts(
    request_model: Any, bundle: Any, tag: str, sensors: list[str], body: bytes, n: int
) -> list[str]:
    """p50 of each step the service runs per request, in process (same functions, same order)."""
    req = request_model.model_validate_json(body)
    frame = serving.readings_to_frame(req.readings, sensors)
    results = scoring.score_readings(bundle, frame)
    steps: list[Callable[[], Any]] = [
        lambda: request_model.model_validate_json(body),
        lambda: serving.readings_to_frame(req.readings, sensors),
        lambda: scoring.check_readings(frame, sensors=sensors, assets=bundle.assets),
        lambda: scoring.score_readings(bundle, frame),
        lambda: serving.results_to_payload(results, request_id="x", model_version=tag, window=bundle.window_),
    ]
    k = max(5, n // 2)
    return [ms(p(timings(step, k), 0.5)) for step in steps]


def run(project: Path, quick: bool, inference_log: bool) -> None:
    params = load_params(project / "params.yaml")
    registry = Registry(project, params.registry, bentoml_home=project / ".bentoml")
    tag, bundle = registry.load_production()
    sensors = list(params.data.sensor_names)
    request_model = serving.build_request_model(sensors, params.serve)
    table = Table(title=f"scoring service vs in-process ({tag}, log {'on' if inference_log else 'off'})")
    for col in ("workload", "HTTP p50 ms", "HTTP p99 ms", "HTTP rows/s",
                "in-proc p50 ms", "in-proc rows/s", "ratio", "review+alert"):  # fmt: skip
        table.add_column(col, justify="right")
    parts = Table(title="service-side work per request, in process (ms, p50)")
    for col in ("workload", "parse+validate", "to frame", "check", "score", "JSON out"):
        parts.add_column(col, justify="right")
    cases = [(w, request_rows(params, list(bundle.assets), w.rows)) for w in workloads(quick)]
    cases.append((Workload(HTTPX_WORKLOAD, cases[-1][0].rows, cases[-1][0].requests), cases[-1][1]))
    with running_server(project, inference_log) as url, httpx.Client(base_url=url, timeout=120) as hx:
        lean = LeanClient(url, timeout=120)
        for w, rows in cases:
            body = body_of(rows, sensors)

            def post(body: bytes = body, name: str = w.name) -> None:
                if name == HTTPX_WORKLOAD:
                    r = hx.post("/score", content=body, headers=JSON)
                    status, content = r.status_code, r.content
                else:
                    status, content = lean.post("/score", body)
                if status != 200:
                    tail = (project / "bench-server.log").read_text(errors="replace")[-4000:]
                    raise SystemExit(f"{name}: HTTP {status} {content[:200]!r}\n{tail}")

            served = timings(post, w.requests)
            frame = rows.copy()

            def in_process(frame: pd.DataFrame = frame) -> pd.DataFrame:
                return scoring.score_checked(bundle, frame)

            inproc = timings(in_process, w.requests)
            http_rps, in_rps = w.rows / statistics.median(served), w.rows / statistics.median(inproc)
            flagged = scoring.score_checked(bundle, frame)["decision"].ne("normal").mean()
            table.add_row(
                w.name, ms(p(served, 0.5)), ms(p(served, 0.99)), f"{http_rps:,.0f}",
                ms(p(inproc, 0.5)), f"{in_rps:,.0f}", f"{http_rps / in_rps:.0%}", f"{flagged:.0%}",
            )  # fmt: skip
            if w.name != HTTPX_WORKLOAD:
                parts.add_row(w.name, *service_parts(request_model, bundle, tag, sensors, body, w.requests))
        lean.close()
        w, rows = cases[-1]
        served, wall = concurrent_timings(url, body_of(rows, sensors), CONCURRENT_CLIENTS, w.requests)
        http_rps = w.rows * len(served) / wall
        table.add_row(
            f"1,000 x {CONCURRENT_CLIENTS} clients", ms(p(served, 0.5)), ms(p(served, 0.99)),
            f"{http_rps:,.0f}",
            ms(p(inproc, 0.5)), f"{in_rps:,.0f}", f"{http_rps / in_rps:.0%}", f"{flagged:.0%}",
        )  # fmt: skip
    console.print(table)
    console.print(parts)
    console.print(
        "goals: 1-reading p50 <= 20 ms; 1,000-row ratio >= 70 %. "
        f"load average now: {', '.join(f'{x:.1f}' for x in os.getloadavg())} (2 cores)"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, help="existing project with a production model")
    ap.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    ap.add_argument("--no-log", action="store_true", help="serve with the inference log off")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.project is not None:
        if args.no_log:
            raise SystemExit("--no-log edits params.yaml: only with the throw-away project")
        run(args.project.resolve(), args.quick, inference_log=True)
        return
    with tempfile.TemporaryDirectory(prefix="pw-bench-serving-") as tmp:
        root = Path(tmp) / "proj"
        os.environ["BENTOML_HOME"] = str(root / ".bentoml")
        throwaway_project(root)
        run(root, args.quick, inference_log=not args.no_log)


if __name__ == "__main__":
    main()
