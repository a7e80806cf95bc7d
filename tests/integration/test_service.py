"""The scoring service over REAL HTTP: a `bentoml serve` subprocess on 127.0.0.1, a real trained
bundle registered and promoted with the Registry in a throw-away project.

One server per module (start-up costs seconds). It starts BEFORE anything is promoted, so the
fixture can record readiness before and after the first model loads.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import psutil
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from plantwatch import inference_log as ilog
from plantwatch import scoring
from plantwatch.config import load_params
from plantwatch.registry import Evidence, Registry
from plantwatch.review import ReviewQueue
from tests.helpers import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
BENTOML = str(Path(sys.executable).parent / "bentoml")
JSON = {"content-type": "application/json"}
TOKEN = "test-token-7f3a"
#: Limits of the test project (small, so the limit cases stay cheap to send).
MAX_READINGS = 400
MAX_BODY_BYTES = 150_000
START_TIMEOUT_S = 120.0


# --------------------------------------------------------------------------------------------
# A project with two trained, registered versions (real pipeline code, tiny data)
# --------------------------------------------------------------------------------------------


def make_project(root: Path) -> Path:
    """params.yaml of the repo with fast reload/log settings and small request limits."""
    root.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["serve"].update(
        reload_poll_s=0.2,
        log_flush_s=0.2,
        max_readings=MAX_READINGS,
        max_body_bytes=MAX_BODY_BYTES,
        token_env="PLANTWATCH_API_TOKEN",
    )
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root


def train_bundles(root: Path) -> tuple[dict[str, Path], pd.DataFrame]:
    """A custom and a baseline bundle fitted with the pipeline's own fit_final on simulator data."""
    from plantwatch.bundle import save_bundle
    from plantwatch.simulate import simulate_fleet
    from plantwatch.training import Settings, fit_final

    params = load_params(root / "params.yaml")
    fleet = simulate_fleet(params.simulate, params.data, seed=3, assets=2, days=1.5)
    cut = fleet["timestamp"].quantile(0.7)
    train, validation = fleet[fleet["timestamp"] <= cut], fleet[fleet["timestamp"] > cut]
    s = Settings(data=params.data, features=params.features, train=params.train, rules=params.rules)
    assets = sorted(fleet["asset"].unique())
    out: dict[str, Path] = {}
    for kind, hyper in (("custom", {"n_estimators": 20, "max_samples": 128}), ("baseline", {})):
        bundle = fit_final(kind, hyper, train, validation, s, assets)
        out[kind] = root / "models" / f"{kind}.skops"
        save_bundle(bundle, out[kind])
    return out, validation


def register(registry: Registry, artifact: Path, kind: str) -> str:
    evidence = Evidence(
        kind=kind,
        train_info={"sources": ["simulator"]},
        holdout={kind: {"pr_auc": 0.5}},
        cv={},
        gates={"passed": True, "chosen": kind, "gates": []},
    )
    return registry.register(artifact, evidence).tag


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    root: Path, port: int, *extra: str, target: str = "services.service:Detector"
) -> subprocess.Popen:
    """`bentoml serve` WITHOUT --host: the service config must bind 127.0.0.1 by itself."""
    env = {
        **os.environ,
        "PLANTWATCH_ROOT": str(root),
        "BENTOML_HOME": str(root / ".bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "PLANTWATCH_API_TOKEN": TOKEN,
    }
    log = (root / f"server-{port}.log").open("wb")
    return subprocess.Popen(
        [BENTOML, "serve", target, "--port", str(port), "--working-dir", str(REPO), *extra],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # own process group: teardown stops exactly what we started
    )


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Server:
    url: str
    root: Path
    proc: subprocess.Popen
    registry: Registry
    tags: dict[str, str]
    validation: pd.DataFrame
    before_ready: dict[str, int]
    sensors: list[str]
    assets: list[str]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = make_project(tmp_path_factory.mktemp("svc") / "proj")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLANTWATCH_ROOT", str(root))
        mp.setenv("BENTOML_HOME", str(root / ".bentoml"))
        mp.chdir(root)
        params = load_params(root / "params.yaml")
        registry = Registry(root, params.registry, bentoml_home=root / ".bentoml")
        artifacts, validation = train_bundles(root)
        tags = {kind: register(registry, path, kind) for kind, path in artifacts.items()}
        port = free_port()
        proc = start_server(root, port)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: up(url) or proc.poll() is not None, START_TIMEOUT_S, "the server to start")
            assert proc.poll() is None, (root / f"server-{port}.log").read_text()[-3000:]
            before = {
                "readyz": httpx.get(f"{url}/readyz").status_code,
                "score": httpx.post(
                    f"{url}/score", content=valid_body(validation, 3), headers=JSON
                ).status_code,
                "model": httpx.post(f"{url}/model", headers=JSON).status_code,
            }
            registry.promote(tags["custom"], reason="first model")
            wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, START_TIMEOUT_S, "readiness")
            bundle = registry.load(tags["custom"])
            yield Server(
                url, root, proc, registry, tags, validation, before, list(bundle.sensors), list(bundle.assets)
            )
        finally:
            stop_server(proc)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def readings(frame: pd.DataFrame, n: int) -> list[dict[str, Any]]:
    """The first n rows of each asset, interleaved (as a gateway batching two streams would send)."""
    parts = [g.head(n) for _, g in frame.groupby("asset", sort=True)]
    rows = pd.concat(parts).sort_values(["timestamp", "asset"], kind="stable")
    out = []
    for _, r in rows.iterrows():
        item = {"timestamp": r["timestamp"].isoformat(), "asset": r["asset"]}
        for s in load_params(REPO / "params.yaml").data.sensor_names:
            item[s] = None if pd.isna(r[s]) else float(r[s])
        out.append(item)
    return out


def valid_body(frame: pd.DataFrame, n: int) -> bytes:
    return json.dumps({"readings": readings(frame, n)}).encode()


# --------------------------------------------------------------------------------------------
# Lifecycle: readiness, binding, model info
# --------------------------------------------------------------------------------------------


def test_not_ready_until_the_production_model_is_loaded(server: Server, client: httpx.Client) -> None:
    assert server.before_ready == {"readyz": 503, "score": 503, "model": 503}
    assert client.get("/readyz").status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/livez").status_code == 200


def test_binds_loopback_only_without_a_host_flag(server: Server) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    procs = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]
    listening = [
        c.laddr
        for p in procs
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening


def test_model_endpoint_reports_version_and_card(server: Server, client: httpx.Client) -> None:
    info = client.post("/model").json()
    production = server.registry.production_tag()
    assert info["model_version"] == production and info["production_version"] == production
    assert info["in_sync"] is True and info["last_reload_error"] is None
    assert info["sensors"] == server.sensors and info["assets"] == server.assets
    assert info["window"] >= 1 and info["card"]["tag"] == production
    assert "intended_use" in info["card"] and "limitations" in info["card"]


def test_metrics_are_exposed(client: httpx.Client, server: Server) -> None:
    client.post("/score", content=valid_body(server.validation, 2), headers=JSON)
    text = client.get("/metrics").text
    assert "bentoml_service_request_total" in text and 'endpoint="/score"' in text


def test_openapi_describes_the_real_body(client: httpx.Client, server: Server) -> None:
    spec = client.get("/docs.json").json()
    reading = spec["components"]["schemas"]["Reading"]
    assert set(reading["required"]) == {"timestamp", "asset", *server.sensors}
    assert reading["additionalProperties"] is False
    assert reading["properties"]["asset"]["enum"] == sorted(server.assets)
    score = spec["paths"]["/score"]["post"]
    assert {"200", "400", "413", "415", "500", "503"} <= set(score["responses"])
    assert score["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ScoreRequest")


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def test_valid_request_scores_every_reading_in_order(server: Server, client: httpx.Client) -> None:
    body = readings(server.validation, 40)
    r = client.post("/score", json={"readings": body})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_version"] == server.registry.production_tag()
    assert len(out["results"]) == len(body) == 80
    for res in out["results"]:
        assert math.isfinite(res["score"]) and res["decision"] in ("normal", "review", "alert")
        assert isinstance(res["rules"], list)
        assert all(set(t) == {"sensor", "contribution"} for t in res["top_sensors"])
    window = out["window"]
    # readings alternate asset by asset, so reading i is the (i // 2 + 1)-th of its asset
    assert [res["full_history"] for res in out["results"]] == [i // 2 + 1 >= window for i in range(80)]
    # same code path as in-process scoring, in the caller's order
    frame = pd.DataFrame(body)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    expected = scoring.score_readings(server.registry.load(out["model_version"]), frame)
    assert [res["score"] for res in out["results"]] == pytest.approx(expected["score"].tolist())
    assert [res["decision"] for res in out["results"]] == expected["decision"].tolist()


def test_short_windows_and_missing_values_degrade_gracefully(server: Server, client: httpx.Client) -> None:
    one = readings(server.validation, 1)[:1]
    one[0][server.sensors[0]] = None
    r = client.post("/score", json={"readings": one})
    assert r.status_code == 200
    res = r.json()["results"][0]
    assert res["full_history"] is False and f"missing:{server.sensors[0]}" in res["rules"]


def _reading(server: Server, **over: Any) -> dict[str, Any]:
    base = readings(server.validation, 1)[0]
    base.update(over)
    return base


MARKER = "zz-echo-marker"


def malformed_cases(server: Server) -> dict[str, tuple[bytes, dict[str, str], int]]:
    s0 = server.sensors[0]
    good = _reading(server)

    def j(obj: Any) -> bytes:
        return json.dumps(obj).encode()

    nan_literal = j({"readings": [good]}).replace(
        f'"{s0}": {json.dumps(good[s0])}'.encode(), f'"{s0}": NaN'.encode()
    )
    return {
        "number as string": (j({"readings": [_reading(server, **{s0: MARKER})]}), JSON, 400),
        "NaN literal": (nan_literal, JSON, 400),
        "Infinity literal": (nan_literal.replace(b"NaN", b"Infinity"), JSON, 400),
        "NaN as string": (j({"readings": [_reading(server, **{s0: "NaN"})]}), JSON, 400),
        "boolean value": (j({"readings": [_reading(server, **{s0: True})]}), JSON, 400),
        "missing sensor": (j({"readings": [{k: v for k, v in good.items() if k != s0}]}), JSON, 400),
        "unknown sensor": (j({"readings": [{**good, MARKER: 1.0}]}), JSON, 400),
        "unknown asset": (j({"readings": [_reading(server, asset=MARKER)]}), JSON, 400),
        "missing timestamp": (
            j({"readings": [{k: v for k, v in good.items() if k != "timestamp"}]}),
            JSON,
            400,
        ),
        "bad timestamp": (j({"readings": [_reading(server, timestamp=MARKER)]}), JSON, 400),
        "year out of range": (
            j({"readings": [_reading(server, timestamp="2300-01-01T00:00:00")]}),
            JSON,
            400,
        ),
        "empty list": (j({"readings": []}), JSON, 400),
        "too many readings": (j({"readings": [good] * (MAX_READINGS + 1)}), JSON, 400),
        "extra top-level field": (j({"readings": [good], "debug": True}), JSON, 400),
        "no readings key": (j({}), JSON, 400),
        "empty body": (b"", JSON, 400),
        "top level is a list": (j([good]), JSON, 400),
        "invalid JSON": (b'{"readings": [', JSON, 400),
        "wrong content type": (j({"readings": [good]}), {"content-type": "text/plain"}, 415),
        "form content type": (b"readings=1", {"content-type": "application/x-www-form-urlencoded"}, 415),
        "oversized body": (j({"readings": [good], "pad": "x" * MAX_BODY_BYTES}), JSON, 413),
    }


def test_malformed_requests_get_the_expected_4xx(server: Server, client: httpx.Client) -> None:
    for name, (body, headers, expected) in malformed_cases(server).items():
        r = client.post("/score", content=body, headers=headers)
        assert r.status_code == expected, f"{name}: {r.status_code} {r.text[:300]}"
        err = r.json()
        assert isinstance(err, dict) and isinstance(err["error"], str) and err["error"], name
        assert MARKER not in r.text, f"{name}: the error echoes the input"


def test_chunked_oversized_body_is_413(server: Server) -> None:
    chunk = json.dumps({"readings": [_reading(server)]}).encode()

    def stream() -> Iterator[bytes]:  # no Content-Length: httpx sends it chunked
        for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
            yield chunk

    r = httpx.post(f"{server.url}/score", content=stream(), headers=JSON, timeout=60)
    assert r.status_code == 413 and "exceeds" in r.json()["error"]


SENSOR_VALUE = st.one_of(
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(min_value=-(10**15), max_value=10**15),
    st.text(max_size=5),
    st.booleans(),
)


@st.composite
def request_bodies(draw: st.DrawFn, sensors: list[str], assets: list[str]) -> Any:
    """Mostly well-shaped readings with hostile values; sometimes structurally broken bodies."""
    n = draw(st.integers(min_value=0, max_value=6))
    items = []
    for _ in range(n):
        item: dict[str, Any] = {
            "timestamp": draw(
                st.one_of(
                    st.datetimes().map(lambda d: d.isoformat()),
                    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
                    st.text(max_size=8),
                    st.integers(),
                )
            ),
            "asset": draw(st.one_of(st.sampled_from(assets), st.text(max_size=3))),
        }
        for s in sensors:
            if draw(st.integers(0, 20)) > 0:
                item[s] = draw(SENSOR_VALUE)
        if draw(st.integers(0, 20)) == 0:
            item[draw(st.text(min_size=1, max_size=4))] = 1.0
        items.append(item)
    return draw(st.one_of(st.just({"readings": items}), st.just(items), st.just({"readings": items, "x": 1})))


def test_generated_requests_never_get_a_5xx(server: Server, client: httpx.Client) -> None:
    seen: set[int] = set()

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(request_bodies(server.sensors, server.assets))
    def check(payload: Any) -> None:
        r = client.post("/score", content=json.dumps(payload).encode(), headers=JSON)
        seen.add(r.status_code)
        assert r.status_code < 500, r.text[:500]
        assert isinstance(r.json(), dict)

    check()
    assert 400 in seen  # the generator did produce bad input


# --------------------------------------------------------------------------------------------
# Inference log, review queue, feedback
# --------------------------------------------------------------------------------------------


def test_scored_requests_are_logged_and_reviews_queued(server: Server, client: httpx.Client) -> None:
    body = readings(server.validation, 60)
    out = client.post("/score", json={"readings": body}).json()
    root = server.root / "data" / "inference"

    def logged() -> list[pd.DataFrame]:
        log = ilog.read_log(root)
        mine = log[log["request_id"] == out["request_id"]] if not log.empty else log
        return [mine] if len(mine) == len(body) else []

    (mine,) = wait_for(logged, 10, "the inference log")
    assert mine["model_version"].unique().tolist() == [out["model_version"]]
    assert mine.sort_values("row")["decision"].tolist() == [r["decision"] for r in out["results"]]
    flagged = {
        (body[i]["asset"], pd.Timestamp(body[i]["timestamp"]).isoformat())
        for i, r in enumerate(out["results"])
        if r["decision"] in ("review", "alert")
    }
    queue = ReviewQueue(server.root / "data" / "review" / "queue.sqlite")

    def queued() -> bool:
        items = {
            (i.asset, i.timestamp)
            for i in queue.list(status="all")
            if i.model_version == out["model_version"]
        }
        return flagged <= items

    wait_for(queued, 10, "review items")


def test_feedback_needs_the_token(server: Server, client: httpx.Client) -> None:
    payload = {
        "asset": server.assets[0],
        "timestamp": "2024-03-01T00:00:00",
        "verdict": "anomaly",
        "by": "ann",
    }
    assert client.post("/feedback", json=payload).status_code == 401
    wrong = client.post("/feedback", json=payload, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 403 and "nope" not in wrong.text
    ok = client.post("/feedback", json=payload, headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["verdict"] == "anomaly" and ok.json()["created"] is True
    bad = client.post(
        "/feedback", json={**payload, "verdict": 3}, headers={"authorization": f"Bearer {TOKEN}"}
    )
    assert bad.status_code == 400


# --------------------------------------------------------------------------------------------
# Hot reload: promotion and rollback under load
# --------------------------------------------------------------------------------------------


def test_promotion_and_rollback_during_a_stream_of_requests(server: Server) -> None:
    body = valid_body(server.validation, 5)
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def stream() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/score", content=body, headers=JSON)
                seen.append((r.status_code, r.json().get("model_version", r.text)))

    start = server.registry.production_tag()
    other = next(t for t in server.tags.values() if t != start)
    worker = threading.Thread(target=stream)
    worker.start()
    try:
        wait_for(lambda: len(seen) >= 3, 60, "first responses")
        server.registry.promote(other, reason="stream test")
        wait_for(lambda: seen[-1][1] == other, 30, "the promoted version")
        server.registry.rollback(reason="stream test rollback")
        wait_for(lambda: seen[-1][1] == start, 30, "the rolled-back version")
        wait_for(lambda: len(seen) >= 3 + 6, 60, "more responses")
    finally:
        stop.set()
        worker.join(timeout=60)
    failures = [s for s in seen if s[0] != 200]
    assert not failures, failures[:5]
    versions = [v for _, v in seen]
    changes = [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]]
    assert changes == [start, other, start]  # no flapping, no mixed answers
    info = httpx.post(f"{server.url}/model").json()
    assert info["model_version"] == start and info["in_sync"] is True


# --------------------------------------------------------------------------------------------
# Offline batch scoring through the same code path
# --------------------------------------------------------------------------------------------


def test_batch_score_cli_matches_the_service(server: Server, client: httpx.Client, tmp_path: Path) -> None:
    from plantwatch.cli import app

    body = readings(server.validation, 30)
    src = tmp_path / "batch.csv"
    pd.DataFrame(body).to_csv(src, index=False)
    out = tmp_path / "scored.parquet"
    log_before = len(ilog.read_log(server.root / "data" / "inference"))
    result = CliRunner().invoke(app, ["score", "--input", str(src), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    http = client.post("/score", json={"readings": body}).json()
    assert summary["model_version"] == http["model_version"] and summary["rows"] == len(body)
    scored = pd.read_parquet(out)
    assert scored["score"].tolist() == pytest.approx([r["score"] for r in http["results"]])
    assert scored["decision"].tolist() == [r["decision"] for r in http["results"]]
    log = ilog.read_log(server.root / "data" / "inference")
    assert len(log) >= log_before + len(body) and "batch" in set(log["source"])

    skip = CliRunner().invoke(
        app, ["score", "--input", str(src), "--out", str(tmp_path / "b.csv"), "--no-log"]
    )
    assert skip.exit_code == 0, skip.output
    bad = CliRunner().invoke(app, ["score", "--input", str(tmp_path / "none.csv"), "--out", str(out)])
    assert bad.exit_code == 2 and "not found" in bad.output


# --------------------------------------------------------------------------------------------
# bentoml build (offline) and serving the built Bento
# --------------------------------------------------------------------------------------------


def test_bentoml_build_offline_and_serve_the_bento(server: Server) -> None:
    env = {**os.environ, "PLANTWATCH_ROOT": str(server.root), "BENTOML_HOME": str(server.root / ".bentoml")}
    env.pop("PIP_INDEX_URL", None)
    build = subprocess.run(
        [BENTOML, "build", "-f", "services/bentofile.yaml", "--output", "tag", "."],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    bento_dir = next((server.root / ".bentoml" / "bentos" / "plantwatch-scoring").glob("*/bento.yaml")).parent
    assert (bento_dir / "src" / "plantwatch" / "serving.py").is_file()
    assert (bento_dir / "src" / "services" / "service.py").is_file()
    assert not (bento_dir / "env" / "python" / "requirements.lock.txt").exists()
    assert not list((bento_dir / "src").rglob("*.skops"))  # code only: the model comes from the registry
    port = free_port()
    proc = start_server(server.root, port, target="plantwatch-scoring:latest")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: up(url) or proc.poll() is not None, START_TIMEOUT_S, "the bento to start")
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, START_TIMEOUT_S, "bento readiness")
        r = httpx.post(f"{url}/score", content=valid_body(server.validation, 2), headers=JSON, timeout=60)
        assert r.status_code == 200 and r.json()["model_version"] == server.registry.production_tag()
    finally:
        stop_server(proc)
    shutil.rmtree(bento_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# A production version that fails verification (real registry, real hashes; in process)
# --------------------------------------------------------------------------------------------


def test_tampered_production_version_is_refused_and_the_old_model_kept(
    server: Server, tmp_path: Path
) -> None:
    from plantwatch import serving

    root = make_project(tmp_path / "other")
    registry = Registry(root, load_params(root / "params.yaml").registry, bentoml_home=root / ".bentoml")
    good = register(registry, server.root / "models" / "custom.skops", "custom")
    bad = register(registry, server.root / "models" / "baseline.skops", "baseline")
    holder = serving.ModelHolder(
        source=serving.RegistrySource(registry),
        poll_s=0.2,
        retry_s=60.0,
        check=serving.check_compatible(server.sensors),
    )
    registry.promote(good, reason="test")
    assert holder.poll_once() and holder.require().tag == good
    registry.promote(bad, reason="test")
    artifact = registry.model_dir(bad) / "model.skops"
    artifact.write_bytes(artifact.read_bytes() + b"tampered")
    assert holder.poll_once() is False
    assert holder.ready and holder.require().tag == good  # still serving the verified version
    info = serving.model_info(holder)
    assert info["in_sync"] is False and info["production_version"] == bad
    assert "integrity" in info["last_reload_error"]
    fresh = serving.ModelHolder(source=serving.RegistrySource(registry), poll_s=0.2, retry_s=60.0)
    assert fresh.poll_once() is False and not fresh.ready  # a cold start on it never becomes ready
