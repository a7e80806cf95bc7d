"""serving.py in process: strict request model, request guard, hot-reload holder, endpoint cores.

A small deterministic bundle stands in for a trained one here (its score depends on each asset's
previous reading, so it notices when rows reach it in the wrong order); the real trained bundle is
exercised over HTTP in tests/integration/test_service.py.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from plantwatch import schema, scoring, serving
from plantwatch.config import ServeConfig, load_params
from plantwatch.errors import RegistryError
from plantwatch.review import ReviewQueue

SENSORS = ["temperature", "vibration"]
ASSETS = ["pump-1", "pump-2"]
CFG = ServeConfig(max_readings=5, max_asset_chars=16, max_abs_value=1e6)


class OrderSensitiveBundle:
    """score = |temperature - previous temperature of the same asset| (0 for the first reading)."""

    def __init__(self, window: int = 3, threshold: float = 10.0, review_low: float = 5.0) -> None:
        self.sensors = list(SENSORS)
        self.assets = list(ASSETS)
        self.window_ = window
        self.threshold_ = threshold
        self.review_low_ = review_low

    def score_frame(self, df: pd.DataFrame) -> pd.DataFrame:
        assert df.equals(df.sort_values([schema.ASSET, schema.TIMESTAMP], kind="stable")), "not canonical"
        diff = df.groupby(schema.ASSET)["temperature"].diff().abs().fillna(0.0).to_numpy()
        decision = np.where(
            diff >= self.threshold_, "alert", np.where(diff >= self.review_low_, "review", "normal")
        )
        rules = [["missing:vibration"] if np.isnan(v) else [] for v in df["vibration"]]
        top = [[{"sensor": "temperature", "contribution": float(d)}] if d > 0 else [] for d in diff]
        return pd.DataFrame(
            {"score": diff, "decision": decision, "rules": rules, "top_sensors": top}, index=df.index
        )


def reading(ts: str, asset: str = "pump-1", temperature: Any = 20.0, vibration: Any = 1.0) -> dict:
    return {"timestamp": ts, "asset": asset, "temperature": temperature, "vibration": vibration}


def body(*readings: dict) -> str:
    return json.dumps({"readings": list(readings)})


@pytest.fixture(scope="module")
def request_model() -> type:
    return serving.build_request_model(SENSORS, CFG)


# --------------------------------------------------------------------------------------------
# Strict request model
# --------------------------------------------------------------------------------------------


def test_valid_request_parses_and_null_sensor_is_allowed(request_model: type) -> None:
    req = request_model.model_validate_json(
        body(reading("2024-01-01T00:00:00Z"), reading("2024-01-01T00:01:00", vibration=None))
    )
    assert len(req.readings) == 2
    assert req.readings[1].sensor_1 is None


MALFORMED = {
    "number as string": body(reading("2024-01-01T00:00:00", temperature="20.5")),
    "NaN literal": '{"readings": [{"timestamp": "2024-01-01T00:00:00", "asset": "pump-1", '
    '"temperature": NaN, "vibration": 1}]}',
    "Infinity literal": '{"readings": [{"timestamp": "2024-01-01T00:00:00", "asset": "pump-1", '
    '"temperature": Infinity, "vibration": 1}]}',
    "NaN string": body(reading("2024-01-01T00:00:00", temperature="NaN")),
    "huge exponent": '{"readings": [{"timestamp": "2024-01-01T00:00:00", "asset": "pump-1", '
    '"temperature": 1e400, "vibration": 1}]}',
    "bool as number": body(reading("2024-01-01T00:00:00", temperature=True)),
    "above max_abs_value": body(reading("2024-01-01T00:00:00", temperature=2e6)),
    "unknown sensor": body({**reading("2024-01-01T00:00:00"), "pressure": 1.0}),
    "missing sensor": body({k: v for k, v in reading("2024-01-01T00:00:00").items() if k != "vibration"}),
    "missing timestamp": body({k: v for k, v in reading("2024-01-01T00:00:00").items() if k != "timestamp"}),
    "epoch number timestamp": body(reading(1704067200)),  # type: ignore[arg-type]
    "year 1677": body(reading("1677-12-31T00:00:00")),
    "year 2262": body(reading("2262-01-01T00:00:00")),
    "asset too long": body(reading("2024-01-01T00:00:00", asset="x" * 17)),
    "empty asset": body(reading("2024-01-01T00:00:00", asset="")),
    "asset as number": body(reading("2024-01-01T00:00:00", asset=7)),  # type: ignore[arg-type]
    "empty list": body(),
    "too many readings": body(*[reading(f"2024-01-01T00:0{i}:00") for i in range(6)]),
    "extra top-level key": json.dumps({"readings": [reading("2024-01-01T00:00:00")], "x": 1}),
    "readings not a list": json.dumps({"readings": reading("2024-01-01T00:00:00")}),
    "not an object": "[1, 2]",
    "invalid JSON": '{"readings": [',
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_are_rejected(request_model: type, raw: str) -> None:
    with pytest.raises(ValidationError):
        request_model.model_validate_json(raw)


def test_readings_to_frame_is_canonical_utc_in_request_order(request_model: type) -> None:
    req = request_model.model_validate_json(
        body(
            reading("2024-01-01T02:00:00+02:00", asset="pump-2"),
            reading("2024-01-01T00:00:00", vibration=None),
            reading("1678-01-01T00:00:00-23:59", temperature=-3),
        )
    )
    frame = serving.readings_to_frame(req.readings, SENSORS)
    assert list(frame.columns) == [schema.TIMESTAMP, schema.ASSET, *SENSORS]
    assert frame[schema.TIMESTAMP].dtype == "datetime64[ns]"
    assert frame[schema.TIMESTAMP].tolist() == [
        pd.Timestamp("2024-01-01T00:00:00"),
        pd.Timestamp("2024-01-01T00:00:00"),
        pd.Timestamp("1678-01-01T23:59:00"),
    ]
    assert frame[schema.ASSET].tolist() == ["pump-2", "pump-1", "pump-1"]
    assert np.isnan(frame["vibration"].iloc[1]) and frame["temperature"].iloc[2] == -3.0


def test_any_sensor_name_works_via_aliases() -> None:
    model = serving.build_request_model(["json", "flow rate"], CFG)
    req = model.model_validate_json(
        json.dumps(
            {"readings": [{"timestamp": "2024-01-01T00:00:00", "asset": "a", "json": 1, "flow rate": 2}]}
        )
    )
    frame = serving.readings_to_frame(req.readings, ["json", "flow rate"])
    assert frame[["json", "flow rate"]].iloc[0].tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="clash"):
        serving.build_reading_model(["asset"], 10, 1.0)


def test_json_schema_names_every_sensor_and_the_limits(request_model: type) -> None:
    js = request_model.model_json_schema()
    reading_schema = js["$defs"]["Reading"]
    assert reading_schema["additionalProperties"] is False
    assert set(reading_schema["required"]) == {"timestamp", "asset", *SENSORS}
    number = reading_schema["properties"]["temperature"]["anyOf"][0]
    assert (number["minimum"], number["maximum"]) == (-1e6, 1e6)
    assert reading_schema["properties"]["timestamp"]["pattern"] == serving.TIMESTAMP_PATTERN
    assert js["properties"]["readings"]["maxItems"] == CFG.max_readings


# --------------------------------------------------------------------------------------------
# Scoring core with the request path
# --------------------------------------------------------------------------------------------


def test_results_come_back_in_request_order_for_interleaved_assets() -> None:
    bundle = OrderSensitiveBundle(window=2)
    frame = pd.DataFrame(
        {
            schema.TIMESTAMP: pd.to_datetime(
                ["2024-01-01 00:01", "2024-01-01 00:00", "2024-01-01 00:01", "2024-01-01 00:00"]
            ),
            schema.ASSET: ["pump-2", "pump-1", "pump-1", "pump-2"],
            "temperature": [50.0, 20.0, 27.0, 40.0],
            "vibration": [1.0, 1.0, np.nan, 1.0],
        }
    )
    out = scoring.score_readings(bundle, frame)
    assert out["score"].tolist() == [10.0, 0.0, 7.0, 0.0]
    assert out["decision"].tolist() == ["alert", "normal", "review", "normal"]
    assert out["rules"].tolist() == [[], [], ["missing:vibration"], []]
    assert out["full_history"].tolist() == [True, False, True, False]
    assert list(out.index) == list(frame.index)


def test_unknown_asset_is_refused_without_echoing_it() -> None:
    frame = pd.DataFrame(
        {
            schema.TIMESTAMP: pd.to_datetime(["2024-01-01"]),
            schema.ASSET: ["<script>evil</script>"],
            "temperature": [1.0],
            "vibration": [1.0],
        }
    )
    with pytest.raises(scoring.InvalidReadings) as err:
        scoring.check_readings(frame, sensors=SENSORS, assets=ASSETS)
    assert err.value.http_status == 400
    assert "evil" not in str(err.value) and "pump-1" in str(err.value)


def test_a_repeated_reading_is_refused() -> None:
    frame = pd.DataFrame(
        {
            schema.TIMESTAMP: pd.to_datetime(["2024-01-01 00:00", "2024-01-01 00:01", "2024-01-01 00:00"]),
            schema.ASSET: ["pump-1", "pump-1", "pump-1"],
            "temperature": [1.0, 2.0, 3.0],
            "vibration": [1.0, 1.0, 1.0],
        }
    )
    with pytest.raises(scoring.InvalidReadings, match=r"duplicate \(asset, timestamp\) in reading\(s\) 2"):
        scoring.check_readings(frame, sensors=SENSORS, assets=ASSETS)
    scoring.check_readings(frame.assign(asset=["pump-1", "pump-1", "pump-2"]), sensors=SENSORS, assets=ASSETS)


def test_non_finite_model_score_is_a_server_fault_not_a_bad_request() -> None:
    class NaNBundle(OrderSensitiveBundle):
        def score_frame(self, df: pd.DataFrame) -> pd.DataFrame:
            out = super().score_frame(df)
            out["score"] = np.nan
            return out

    frame = pd.DataFrame(
        {
            schema.TIMESTAMP: pd.to_datetime(["2024-01-01"]),
            schema.ASSET: ["pump-1"],
            "temperature": [1.0],
            "vibration": [1.0],
        }
    )
    with pytest.raises(scoring.ScoringFailed):
        scoring.score_readings(NaNBundle(), frame)


def test_payload_matches_the_response_model() -> None:
    frame = pd.DataFrame(
        {
            schema.TIMESTAMP: pd.to_datetime(["2024-01-01 00:00", "2024-01-01 00:01"]),
            schema.ASSET: ["pump-1"] * 2,
            "temperature": [1.0, 30.0],
            "vibration": [1.0, 1.0],
        }
    )
    results = scoring.score_readings(OrderSensitiveBundle(), frame)
    payload = serving.results_to_payload(results, request_id="r1", model_version="m:1", window=3)
    parsed = serving.ScoreResponse.model_validate_json(payload)
    assert parsed.model_version == "m:1" and parsed.window == 3
    assert [r.decision for r in parsed.results] == ["normal", "alert"]
    assert parsed.results[1].top_sensors[0].sensor == "temperature"


def test_payload_serialises_numpy_values_and_null_contributions() -> None:
    """Bundles may hand back numpy scalars/arrays; a NaN contribution (a null sensor) is JSON null."""
    results = pd.DataFrame(
        {
            "score": np.array([0.5], dtype="float32"),
            "decision": ["review"],
            "rules": [[]],
            "top_sensors": [[{"sensor": "temperature", "contribution": np.float64("nan")}]],
            "full_history": np.array([False]),
        }
    )
    payload = json.loads(serving.results_to_payload(results, request_id="r", model_version="m:1", window=3))
    assert payload["results"] == [
        {"score": 0.5, "decision": "review", "rules": [], "full_history": False,
         "top_sensors": [{"sensor": "temperature", "contribution": None}]},
    ]  # fmt: skip


def test_traffic_config_comes_from_the_serve_block() -> None:
    limited = serving.traffic_config(ServeConfig(max_concurrency=4, request_timeout_s=9.0))
    assert limited == {"timeout": 9.0, "max_concurrency": 4}
    assert serving.traffic_config(ServeConfig(max_concurrency=None)) == {"timeout": 60.0}


# --------------------------------------------------------------------------------------------
# Request guard (ASGI): 413 / 415 before anything parses the body
# --------------------------------------------------------------------------------------------


def _run_asgi(
    app: Any, method: str, path: str, headers: dict[str, str], chunks: list[bytes]
) -> tuple[int, bytes, list]:
    """Drive an ASGI app with a body split into ``chunks``; returns status, body, what the app saw."""
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[dict] = []
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, out, sent


class EchoApp:
    """Reads the whole body and answers it back (what the guarded app would parse)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.calls += 1
        data = b""
        while True:
            msg = await receive()
            data += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": data})


def test_guard_passes_small_json_bodies_through_intact() -> None:
    inner = EchoApp()
    guard = serving.RequestGuard(inner, max_body_bytes=100, json_paths=["/score"])
    status, out, _ = _run_asgi(
        guard, "POST", "/score", {"content-type": "application/json"}, [b'{"a":', b" 1}"]
    )
    assert (status, out, inner.calls) == (200, b'{"a": 1}', 1)


def test_guard_refuses_a_declared_oversized_body_without_reading_it() -> None:
    inner = EchoApp()
    guard = serving.RequestGuard(inner, max_body_bytes=100, json_paths=["/score"])
    status, out, _ = _run_asgi(
        guard, "POST", "/score", {"content-type": "application/json", "content-length": "101"}, [b"x" * 101]
    )
    assert status == 413 and inner.calls == 0
    assert json.loads(out) == {"error": "request body exceeds 100 bytes"}


def test_guard_counts_streamed_bytes_of_chunked_bodies() -> None:
    inner = EchoApp()
    guard = serving.RequestGuard(inner, max_body_bytes=100, json_paths=["/score"])
    status, _, _ = _run_asgi(guard, "POST", "/score", {"content-type": "application/json"}, [b"x" * 60] * 2)
    assert status == 413 and inner.calls == 0


def test_guard_refuses_non_json_content_type_on_api_routes_only() -> None:
    inner = EchoApp()
    guard = serving.RequestGuard(inner, max_body_bytes=100, json_paths=["/score"])
    assert _run_asgi(guard, "POST", "/score", {"content-type": "text/plain"}, [b"{}"])[0] == 415
    assert (
        _run_asgi(guard, "POST", "/score", {"content-type": "application/json; charset=utf-8"}, [b"{}"])[0]
        == 200
    )
    assert _run_asgi(guard, "POST", "/other", {"content-type": "text/plain"}, [b"{}"])[0] == 200
    assert _run_asgi(guard, "GET", "/score", {}, [])[0] == 200


# --------------------------------------------------------------------------------------------
# Active model holder (hot reload)
# --------------------------------------------------------------------------------------------


class FakeSource:
    """A registry stand-in: a movable pointer and loadable versions (some broken)."""

    def __init__(self) -> None:
        self.pointer: str | None = None
        self.broken: set[str] = set()
        self.bundles: dict[str, Any] = {}
        self.loads: list[str] = []

    def production_tag(self) -> str | None:
        return self.pointer

    def load(self, tag: str) -> Any:
        self.loads.append(tag)
        if tag in self.broken:
            raise RegistryError(f"{tag}: integrity check failed")
        return self.bundles.get(tag) or OrderSensitiveBundle()

    def card(self, tag: str) -> dict[str, Any]:
        return {"tag": tag}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def unfrozen_gc() -> Iterator[None]:
    """Leave the test process's collector as it was (freezing is process-wide)."""
    threshold = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_holder_freezes_long_lived_objects_after_each_swap_only_when_asked(unfrozen_gc: None) -> None:
    source = FakeSource()
    source.pointer = "m:1"
    serving.ModelHolder(source=source, poll_s=1.0, retry_s=30.0).poll_once()
    assert gc.get_freeze_count() == 0
    holder = serving.ModelHolder(source=source, poll_s=1.0, retry_s=30.0, freeze_gc=True)
    assert holder.poll_once() is True
    frozen = gc.get_freeze_count()
    assert frozen > 0  # the loaded model and everything imported so far
    assert holder.poll_once() is False and gc.get_freeze_count() == frozen  # no swap, no freeze
    gc.unfreeze()
    source.pointer = "m:2"
    assert holder.poll_once() is True and gc.get_freeze_count() > 0


def test_tune_gc_raises_only_the_young_generation_threshold(unfrozen_gc: None) -> None:
    _, gen1, gen2 = gc.get_threshold()
    serving.tune_gc(ServeConfig(gc_gen0_threshold=12_345))
    assert gc.get_threshold() == (12_345, gen1, gen2)
    before = gc.get_threshold()
    serving.tune_gc(ServeConfig(gc_gen0_threshold=None))
    assert gc.get_threshold() == before


def test_holder_is_not_ready_until_a_version_loads_then_follows_the_pointer() -> None:
    source = FakeSource()
    holder = serving.ModelHolder(
        source=source, poll_s=1.0, retry_s=30.0, check=serving.check_compatible(SENSORS)
    )
    assert holder.poll_once() is False and not holder.ready
    with pytest.raises(serving.NotReady):
        holder.require()
    source.pointer = "m:1"
    assert holder.poll_once() is True and holder.require().tag == "m:1"
    assert holder.poll_once() is False and source.loads == ["m:1"]  # unchanged pointer: no reload
    source.pointer = "m:2"
    assert holder.poll_once() is True and holder.require().tag == "m:2"


def test_failed_load_keeps_the_old_model_and_retries_after_the_backoff() -> None:
    source, clock = FakeSource(), Clock()
    holder = serving.ModelHolder(source=source, poll_s=1.0, retry_s=30.0, clock=clock)
    source.pointer = "m:1"
    holder.poll_once()
    source.pointer, source.broken = "m:2", {"m:2"}
    assert holder.poll_once() is False
    assert holder.require().tag == "m:1" and holder.ready
    assert "m:2" in (holder.status.last_error or "")
    clock.now = 10.0
    holder.poll_once()
    assert source.loads.count("m:2") == 1  # inside the backoff: not retried
    source.broken.clear()
    clock.now = 31.0
    assert holder.poll_once() is True and holder.require().tag == "m:2"
    assert holder.status.last_error is None


def test_a_model_with_other_sensors_is_refused() -> None:
    source = FakeSource()
    holder = serving.ModelHolder(
        source=source, poll_s=1.0, retry_s=30.0, check=serving.check_compatible(["x"])
    )
    source.pointer = "m:1"
    assert holder.poll_once() is False and not holder.ready
    assert "differ from the data contract" in (holder.status.last_error or "")


def test_a_model_that_cannot_score_is_refused_before_it_serves() -> None:
    class Stale(OrderSensitiveBundle):  # e.g. pickled by an older version of the feature code
        def score_frame(self, df: pd.DataFrame) -> pd.DataFrame:
            raise ValueError("matmul: size 6 is different from 18")

    source = FakeSource()
    holder = serving.ModelHolder(
        source=source, poll_s=1.0, retry_s=30.0, check=serving.check_compatible(SENSORS)
    )
    source.pointer = "m:1"
    assert holder.poll_once() is True
    source.pointer, source.bundles["m:2"] = "m:2", Stale()
    assert holder.poll_once() is False and holder.require().tag == "m:1"
    assert "cannot score a probe" in (holder.status.last_error or "")


def test_watcher_thread_picks_up_a_pointer_change() -> None:
    source = FakeSource()
    source.pointer = "m:1"
    holder = serving.ModelHolder(source=source, poll_s=0.02, retry_s=30.0)
    holder.start()
    try:
        _wait(lambda: holder.ready)
        source.pointer = "m:2"
        _wait(lambda: holder.require().tag == "m:2")
    finally:
        holder.stop()
    assert holder._thread is None


def _wait(cond: Any, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --------------------------------------------------------------------------------------------
# Endpoint cores
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def app(tmp_path: Path) -> Iterator[serving.ScoringApp]:
    source = FakeSource()
    source.pointer = "m:1"
    holder = serving.ModelHolder(source=source, poll_s=1.0, retry_s=30.0)
    holder.poll_once()
    scoring_app = serving.ScoringApp(
        holder=holder,
        sensors=SENSORS,
        request_model=serving.build_request_model(SENSORS, CFG),
        log_writer=None,
        queue_factory=lambda: ReviewQueue(tmp_path / "queue.sqlite"),
        token_env="PW_TEST_TOKEN",
    )
    yield scoring_app
    scoring_app.close()


def test_score_reply(app: serving.ScoringApp, request_model: type) -> None:
    req = request_model.model_validate_json(
        body(reading("2024-01-01T00:00:00"), reading("2024-01-01T00:01:00", temperature=40.0))
    )
    reply = app.score(req.readings)
    assert reply.status == 200
    parsed = json.loads(reply.body)
    assert parsed["model_version"] == "m:1" and len(parsed["request_id"]) == 32
    assert [r["decision"] for r in parsed["results"]] == ["normal", "alert"]


def test_unknown_asset_is_400_and_not_ready_is_503(app: serving.ScoringApp, request_model: type) -> None:
    req = request_model.model_validate_json(body(reading("2024-01-01T00:00:00", asset="pump-9")))
    assert app.score(req.readings).status == 400
    empty = serving.ModelHolder(source=FakeSource(), poll_s=1.0, retry_s=1.0)
    not_ready = serving.ScoringApp(
        holder=empty,
        sensors=SENSORS,
        request_model=request_model,
        log_writer=None,
        queue_factory=lambda: None,
        token_env="X",
    )
    reply = not_ready.score(req.readings)
    assert reply.status == 503 and json.loads(reply.body)["error"].startswith("no verified")
    assert not_ready.model().status == 503


def test_unexpected_failure_is_a_bare_500(app: serving.ScoringApp, request_model: type) -> None:
    class Exploding(OrderSensitiveBundle):
        def score_frame(self, df: pd.DataFrame) -> pd.DataFrame:
            raise ZeroDivisionError("secret internals /etc/passwd")

    app.holder._current = serving.LoadedModel("m:x", Exploding(), {}, datetime(2024, 1, 1))
    req = request_model.model_validate_json(body(reading("2024-01-01T00:00:00")))
    reply = app.score(req.readings)
    assert reply.status == 500
    assert json.loads(reply.body) == {"error": serving.INTERNAL_ERROR}


def test_raw_bodies_are_validated_without_echoing_values_or_keys(app: serving.ScoringApp) -> None:
    secret = "zz-client-secret"
    hostile = body({**reading("2024-01-01T00:00:00", temperature=secret), secret: 1})
    reply = app.score_body(hostile)
    assert reply.status == 400 and secret.encode() not in reply.body
    err = json.loads(reply.body)
    assert err["error"].startswith("invalid request: readings.0.temperature: Input should be a valid number")
    assert {"loc": ["readings", 0, serving.UNKNOWN_FIELD], "msg": "Extra inputs are not permitted",
            "type": "extra_forbidden"} in err["detail"]  # fmt: skip
    many = app.score_body(json.dumps({"readings": [{"x": i} for i in range(5)]}))
    assert len(json.loads(many.body)["detail"]) == app.max_error_details < 5 * 5
    assert app.score_body(b"").status == 400  # empty body = {}: "readings" is missing
    assert app.score_body(body(reading("2024-01-01T00:00:00"))).status == 200


def test_model_body_takes_nothing_or_an_empty_object(app: serving.ScoringApp) -> None:
    assert app.model_body(b"").status == 200 and app.model_body("{}").status == 200
    assert app.model_body('{"verbose": true}').status == 400


def test_feedback_body_authenticates_before_parsing(
    app: serving.ScoringApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PW_TEST_TOKEN", "s3cret")
    assert app.feedback_body(b"not json", {}).status == 401
    assert app.feedback_body(b"not json", {"authorization": "Bearer s3cret"}).status == 400
    good = {"asset": "pump-1", "timestamp": "2024-01-01T00:00:00", "verdict": "normal", "by": "bo"}
    ok = app.feedback_body(json.dumps(good), {"authorization": "Bearer s3cret"})
    assert ok.status == 200 and json.loads(ok.body)["verdict"] == "normal"


def test_model_info(app: serving.ScoringApp) -> None:
    info = json.loads(app.model().body)
    assert info["model_version"] == "m:1" and info["in_sync"] is True
    assert info["window"] == 3 and info["assets"] == ASSETS and info["card"] == {"tag": "m:1"}


def test_feedback_needs_the_configured_token(
    app: serving.ScoringApp, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    payload = {"asset": "pump-1", "timestamp": "2024-01-01T00:00:00", "verdict": "anomaly", "by": "ann"}
    monkeypatch.delenv("PW_TEST_TOKEN", raising=False)
    assert app.feedback(payload, {"authorization": "Bearer s3cret"}).status == 403
    assert not (tmp_path / "queue.sqlite").exists()  # refused before the queue was opened
    monkeypatch.setenv("PW_TEST_TOKEN", "s3cret")
    assert app.feedback(payload, {}).status == 401
    assert app.feedback(payload, {"authorization": "Bearer nope"}).status == 403
    ok = app.feedback(payload, {"authorization": "Bearer s3cret"})
    assert ok.status == 200 and json.loads(ok.body)["created"] is True
    bad = app.feedback({**payload, "verdict": "maybe"}, {"authorization": "Bearer s3cret"})
    assert bad.status == 400 and "verdict" in json.loads(bad.body)["error"]


# --------------------------------------------------------------------------------------------
# OpenAPI patch
# --------------------------------------------------------------------------------------------


def test_openapi_patch_documents_errors_nullables_and_assets(request_model: type) -> None:
    spec = {"paths": {"/score": {"post": {"responses": {}}}, "/model": {"post": {}}}, "components": {}}
    routes = {
        "/score": serving.RouteDoc(request_model, serving.ScoreResponse, errors=(503,)),
        "/model": serving.RouteDoc(
            serving.EmptyRequest, serving.ModelInfo, errors=(503,), body_required=False
        ),
    }
    out = serving.patch_openapi(spec, routes, assets=["b", "a"])
    score = out["paths"]["/score"]["post"]
    assert set(score["responses"]) == {"200", "400", "413", "415", "500", "503"}
    assert score["requestBody"]["required"] is True
    assert out["paths"]["/model"]["post"]["requestBody"]["required"] is False
    components = out["components"]["schemas"]
    assert components["Reading"]["properties"]["asset"]["enum"] == ["a", "b"]
    temp = components["Reading"]["properties"]["temperature"]
    assert temp["nullable"] is True and temp["type"] == "number" and "anyOf" not in temp
    assert components["ModelInfo"]["properties"]["production_version"]["nullable"] is True


def test_repo_params_build_a_request_model(repo_root: Path) -> None:
    params = load_params(repo_root / "params.yaml")
    model = serving.build_request_model(params.data.sensor_names, params.serve)
    assert set(model.model_json_schema()["$defs"]["Reading"]["required"]) >= set(params.data.sensor_names)


def test_client_validation_errors_are_logged_as_one_info_line(
    request_model: type, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("test.serving.filter")
    logger.addFilter(serving.ClientErrorLogFilter())
    try:
        request_model.model_validate_json("[]")
    except ValidationError:
        logger.error("Exception on %s [%s]", "/score", "POST", exc_info=True)
    try:
        raise KeyError("real fault")
    except KeyError:
        logger.error("Exception on %s [%s]", "/score", "POST", exc_info=True)
    first, second = caplog.records
    assert first.levelno == logging.INFO and first.exc_info is None
    assert first.getMessage() == "/score POST rejected: 1 validation error(s)"
    assert second.levelno == logging.ERROR and second.exc_info is not None


def test_serve_command_execs_bentoml_on_loopback(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from plantwatch.cli import app
    from plantwatch.cli import serve as serve_cli

    captured: dict[str, Any] = {}

    def fake_execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        captured.update(path=path, argv=argv, env=env)

    monkeypatch.setattr(serve_cli.os, "execve", fake_execve)
    result = CliRunner().invoke(app, ["serve", "--port", "3999"])
    assert result.exit_code == 0, result.output
    argv = captured["argv"]
    assert argv[1:3] == ["serve", "services.service:Detector"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "3999"
    assert (Path(argv[argv.index("--working-dir") + 1]) / "services" / "service.py").is_file()
    assert (
        captured["env"]["PLANTWATCH_ROOT"] == str(project)
        and captured["env"]["BENTOML_DO_NOT_TRACK"] == "true"
    )
