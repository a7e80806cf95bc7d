"""``make demo``: the whole plantwatch lifecycle, offline, on the embedded fleet simulator.

train + gate + promote → serve over HTTP → score a normal day → a drifted regime arrives →
drift detected (k of m batches) → retrain through the Prefect flow → gates → promoted or refused
→ the running service answers with the new version (hot reload) → summary.

Thin driver: every step calls the same functions the CLI, the flows and the service use.
It resets the previous demo's generated state first (all of it is git-ignored).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)
os.environ.setdefault("PLANTWATCH_ROOT", str(ROOT))
os.environ.setdefault("BENTOML_HOME", str(ROOT / ".bentoml"))
os.environ.setdefault("PREFECT_HOME", str(ROOT / ".prefect"))

import httpx  # noqa: E402
import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.logging import RichHandler  # noqa: E402
from rich.table import Table  # noqa: E402

import plantwatch  # noqa: E402,F401  (telemetry off before anything else)
from plantwatch import schema  # noqa: E402
from plantwatch.config import Params, load_params  # noqa: E402
from plantwatch.inference_log import REQUEST_ID, read_log  # noqa: E402
from plantwatch.orchestration import retrain, stop_process_group  # noqa: E402
from plantwatch.paths import ProjectPaths  # noqa: E402
from plantwatch.registry import Registry  # noqa: E402
from plantwatch.simulate import simulate_fleet  # noqa: E402

console = Console()
log = logging.getLogger("plantwatch.demo")

#: Generated state of a previous demo run (all git-ignored); removed so the story starts fresh.
GENERATED = ["data", "models", "metrics", "plots", "reports", "registry", "monitoring", ".bentoml", "gx",
             "dvc.lock"]
#: Seconds to wait for the service to load and verify the production model.
READY_TIMEOUT_S = 180
#: Seconds to wait for the service to pick up a new production version.
RELOAD_TIMEOUT_S = 60


def step(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def reset() -> None:
    for name in GENERATED:
        p = ROOT / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(port: int) -> subprocess.Popen[bytes]:
    bentoml = Path(sys.executable).parent / "bentoml"
    logf = (ROOT / "reports" / "service.log").open("wb")
    return subprocess.Popen(
        [str(bentoml), "serve", "services.service:Detector", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
    )


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> float:
    start = time.monotonic()
    while time.monotonic() - start < READY_TIMEOUT_S:
        if proc.poll() is not None:
            raise SystemExit(f"service exited with {proc.returncode}: see reports/service.log")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("service did not become ready: see reports/service.log")


def served_version(url: str) -> str:
    return str(httpx.post(f"{url}/model", json={}, timeout=30).json()["model_version"])


def send_day(
    url: str, day: pd.DataFrame, sensors: list[str], history: pd.DataFrame, window: int
) -> tuple[list[str], pd.Series]:
    """One request per asset: the asset's last ``window`` readings (the history rolling features
    need, as a plant system streaming a sliding window would send) followed by the new day."""
    ids: list[str] = []
    decisions: list[str] = []
    for asset, new in day.groupby(schema.ASSET, sort=True):
        before = history[history[schema.ASSET] == asset].tail(window)
        rows = pd.concat([before, new], ignore_index=True)
        values = rows[sensors].to_numpy()
        readings = [
            {"timestamp": ts.isoformat(), "asset": str(asset),
             **dict(zip(sensors, map(float, vals), strict=True))}
            for ts, vals in zip(rows[schema.TIMESTAMP], values, strict=True)
        ]
        resp = httpx.post(f"{url}/score", json={"readings": readings}, timeout=120)
        resp.raise_for_status()
        body = resp.json()
        ids.append(body["request_id"])
        decisions += [r["decision"] for r in body["results"][len(before):]]
    return ids, pd.Series(decisions).value_counts()


def logged_window(paths: ProjectPaths, request_ids: list[str], name: str, day: pd.DataFrame) -> Path:
    """The inference-log rows of these requests, inside the day's time range, as one monitoring batch."""
    deadline = time.monotonic() + 30
    while True:  # the service writes its log from a background thread
        logged = read_log(paths.inference_log)
        window = logged[logged[REQUEST_ID].isin(request_ids)] if len(logged) else logged
        if len(window) and window[REQUEST_ID].nunique() == len(request_ids):
            break
        if time.monotonic() > deadline:
            raise SystemExit("the service did not write its inference log in time")
        time.sleep(1)
    ts = pd.to_datetime(window[schema.TIMESTAMP])
    window = window[(ts >= day[schema.TIMESTAMP].min()) & (ts <= day[schema.TIMESTAMP].max())]
    out = paths.root / "data" / "monitoring-batches" / f"{name}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    window.drop(columns=["date"], errors="ignore").to_parquet(out, index=False)
    return out


def show_gates(paths: ProjectPaths) -> None:
    gates = json.loads((paths.metrics / "gates.json").read_text())
    table = Table(title=f"gates (chosen: {gates.get('chosen')}, verdict: {gates.get('verdict')})")
    for col in ("gate", "value", "threshold", "passed"):
        table.add_column(col)
    for g in [*gates.get("gates", []), *gates.get("not_judged", [])]:
        value = g.get("value")
        mark = "not judged" if g.get("judged") is False else ("✔" if g.get("passed") else "✘")
        table.add_row(str(g.get("name")), f"{value:.3f}" if isinstance(value, float) else str(value),
                      str(g.get("threshold")), mark)
    console.print(table)
    console.print(f"  evidence: {(gates.get('evidence') or {}).get('reason')}")
    if (gates.get("cv_evidence") or {}).get("reason"):
        console.print(f"  CV evidence: {gates['cv_evidence']['reason']}")
    for g in gates.get("gates", []):
        if g.get("name") == "non_inferiority_vs_production" and g.get("reason"):
            console.print(f"  non-inferiority: {g['reason']}")


def monitor(paths: ProjectPaths, batch: Path) -> dict[str, Any]:
    from flows.monitoring import monitoring_flow

    out = monitoring_flow(batch_path=str(batch), root=str(paths.root))
    drifted = [n for n, s in (out.get("sensors") or {}).items() if s.get("drifted")]
    console.print(
        f"  batch [bold]{batch.stem}[/]: drift={out.get('drift')} share={out.get('drift_share')} "
        f"drifted sensors={drifted or '-'} → retrain: [bold]{out.get('retrain')}[/]"
    )
    for action in out.get("actions", []):
        console.print(f"  action: {action}")
    return out


def summary(paths: ProjectPaths, params: Params, url: str, story: dict[str, Any]) -> None:
    reg = Registry(paths.root, params.registry)
    table = Table(title="model versions")
    for col in ("version", "kind", "stage", "pr_auc", "event_recall"):
        table.add_column(col)
    for v in reg.versions():
        s = v.summary()
        m = s.get("metrics") or {}
        table.add_row(s["tag"], str(s.get("kind")), str(s.get("stage")),
                      f"{m.get('pr_auc', float('nan')):.3f}", f"{m.get('event_recall', float('nan')):.3f}")
    console.print(table)
    console.print("[bold]audit trail[/] (plantwatch audit):")
    for e in reg.audit_events()[-8:]:
        console.print(f"  {e.get('at')}  {e.get('event'):<18} {e.get('from') or ''} → {e.get('to') or ''}  "
                      f"{(e.get('reason') or '')[:60]}")
    for k, v in story.items():
        console.print(f"  {k}: [bold]{v}[/]")
    console.print(
        "\n[bold]Look at the results:[/]\n"
        "  make dashboards                      Evidently drift dashboards → http://127.0.0.1:8000\n"
        "  reports/gates.md, metrics/*.json     gate report and metrics (dvc metrics show)\n"
        "  reports/figures/*.png                PR curve, score distributions, alerts (dvc plots show)\n"
        "  reports/data_docs/index.html         Great Expectations Data Docs\n"
        "  reports/drift/*.html                 one Evidently report per monitored batch\n"
        "  plantwatch models | audit | review list   registry, audit trail, review queue\n"
        "  make serve / make deploy             the service / Prefect server with schedules\n"
    )


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)])
    noisy_loggers = ("great_expectations", "distributed", "bentoml", "httpx", "urllib3", "matplotlib",
                     "prefect")
    for noisy in noisy_loggers:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    paths = ProjectPaths.at(ROOT)
    params = load_params(paths.params)
    sensors = params.data.sensor_names
    story: dict[str, Any] = {}
    t0 = time.monotonic()

    reuse = "--reuse" in sys.argv  # keep the trained model of the last run (developer shortcut)
    if not reuse:
        step("0/6 reset the previous demo's generated state")
        reset()
    (ROOT / "reports").mkdir(parents=True, exist_ok=True)

    step("1/6 simulate → ingest → validate → features → train → evaluate → gate → promote (dvc repro)")
    first = retrain(paths, params, reason="initial training (make demo)")
    show_gates(paths)
    if first.after is None:
        raise SystemExit(f"the first model was refused: {first.refusals}")
    story["first production version"] = first.after

    step("2/6 serve the production model over HTTP (bentoml serve, 127.0.0.1)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_service(port)
    try:
        secs = wait_ready(url, proc)
        console.print(f"  service ready in {secs:.0f} s at {url}, serving [bold]{served_version(url)}[/]")

        raw = pd.read_parquet(paths.resolve(params.data.sources[0]))
        start = pd.Timestamp(raw[schema.TIMESTAMP].max()) + pd.Timedelta(seconds=params.data.interval_s)
        window = int(httpx.post(f"{url}/model", json={}, timeout=30).json()["window"])
        day = pd.Timedelta(days=1)

        step("3/6 a normal day of traffic → scored → monitored")
        normal = simulate_fleet(params.simulate, params.data, scenario="normal", start=start,
                                variant=1, days=1)
        ids, counts = send_day(url, normal, sensors, raw, window)
        faults = int(normal["label"].sum())
        console.print(f"  decisions: {counts.to_dict()} (rows inside true fault episodes: {faults})")
        monitor(paths, logged_window(paths, ids, "day-1-normal", normal))

        step("4/6 the plant changes: two days of a new operating regime + a recalibrated pressure sensor")
        before_version = served_version(url)
        outcome: dict[str, Any] = {}
        previous = normal
        for i in (1, 2):
            drift = simulate_fleet(params.simulate, params.data, scenario="drift", start=start + i * day,
                                   variant=1 + i, days=1)
            ids, counts = send_day(url, drift, sensors, previous, window)
            console.print(f"  drift day {i} decisions: {counts.to_dict()}")
            outcome = monitor(paths, logged_window(paths, ids, f"day-{i + 1}-drift", drift))
            previous = drift

        step("5/6 retrain outcome and hot reload")
        result = outcome.get("retrain_outcome") or {}
        story["drift decision"] = outcome.get("retrain")
        story["retrain"] = result.get("status", "not run")
        before_after = f"{result.get('before')} → {result.get('after')}"
        console.print(f"  retrain: [bold]{story['retrain']}[/] ({before_after})")
        if result.get("status") in ("promoted", "refused"):
            show_gates(paths)  # the retrain's gate decision, judged on the frozen holdout
        if result.get("refusals"):
            story["refused because"] = "; ".join(result["refusals"])[:300]
            console.print(f"  refused because: {story['refused because']}")
            console.print("  production is unchanged; the refused version is kept as 'rejected' with its "
                          "reasons (plantwatch models), and operators see the alert storm on the dashboard")
        if result.get("status") == "promoted":
            deadline = time.monotonic() + RELOAD_TIMEOUT_S
            while served_version(url) == before_version and time.monotonic() < deadline:
                time.sleep(1)
        now = served_version(url)
        story["service now serves"] = now + (" (hot-reloaded, no restart)" if now != before_version else "")
        check = simulate_fleet(params.simulate, params.data, scenario="drift", start=start + 3 * day,
                               variant=9, days=1)
        _, counts = send_day(url, check, sensors, previous, window)
        console.print(f"  the new regime scored by {now}: {counts.to_dict()}")
        story["new-regime decisions after retrain"] = counts.to_dict()
    finally:
        stop_process_group(proc, grace_s=30)

    step("6/6 summary")
    story["demo took"] = f"{time.monotonic() - t0:.0f} s"
    summary(paths, params, url, story)
    return 0


if __name__ == "__main__":
    from plantwatch.errors import PlantwatchError

    try:
        raise SystemExit(main())
    except PlantwatchError as err:
        console.print(f"[bold red]demo stopped:[/] {err}")
        raise SystemExit(err.exit_code) from None
