"""Registry faults while the service runs: kill -9 during promotion and rollback, racing
promotions, tampered artifacts and pointers.

* ``kill -9`` at every named fault point of a registration, a promotion and a rollback (13
  points) of the registry the live service watches: after each kill the pointer is valid JSON
  naming a complete, hash-verified version (the old one before the atomic rename, the new one
  after), and a client streaming /score requests the whole time sees 0 failures.
* Two processes promoting at once, 20 rounds: serialised, no lost update, history = audit order.
* A tampered artifact or a hand-edited pointer is refused with a clear error; the service keeps
  its last verified model, /readyz stays truthful and /model says what is wrong.

The kills happen in a single-threaded helper process that forks one child per point (forking the
multi-threaded pytest process would be unsafe); the helper checks the disk state after each kill.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from plantwatch.registry.faults import POINTS
from plantwatch.registry.pointer import PointerState, write_pointer
from tests.integration.test_registry_crash import RACER, _assert_consistent
from tests.reliability.conftest import JSON_HEADERS, LiveServer, body_of, record_figure, wait_for
from tests.unit.test_registry_fixtures import dump_model, evidence, open_registry

pytestmark = [pytest.mark.slow, pytest.mark.integration]

HELPER_TIMEOUT_S = 180
SYNC_TIMEOUT_S = 30
REGISTER_POINTS = [p for p in POINTS if p.startswith("register.")]
MOVE_POINTS = [p for p in POINTS if not p.startswith("register.")]
COMMITTED = {"pointer.after_replace", "promote.after_pointer_write"}
MIN_KILL_POINTS = 10

#: Runs in its own interpreter: for each (action, point) fork a child that SIGKILLs itself at the
#: point, then check the pointer and print one JSON line. argv: root, other tag, artifact.
KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    from plantwatch.config import load_params
    from plantwatch.registry import Evidence, Registry
    from plantwatch.registry.faults import CRASH_ENV, POINTS
    from plantwatch.registry.pointer import parse_pointer

    root, other, artifact = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    cfg = load_params(root / "params.yaml").registry
    reg = Registry(root, cfg)
    good = reg.production_tag()
    evidence = Evidence(kind="custom", train_info={"sources": ["simulator"]},
                        holdout={"custom": {"pr_auc": 0.5}}, cv={},
                        gates={"passed": True, "chosen": "custom", "gates": []})

    def crash(point, action):
        pid = os.fork()
        if pid == 0:
            try:
                os.environ[CRASH_ENV] = point
                action(Registry(root, cfg))
            finally:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

    def check():
        fresh = Registry(root, cfg)
        state = parse_pointer(json.loads(fresh.pointer_path.read_text()), "file")
        previous = None
        for entry in state.history:
            assert entry["from"] == previous, "history chain broken"
            previous = entry["tag"]
        tag, model = fresh.load_production()  # hash-verified
        assert tag == state.current and model.threshold_ is not None
        return tag

    def settle(fresh, tag):  # put production back on `tag` cleanly (not under test)
        if fresh.production_tag() != tag:
            fresh.promote(tag, reason="reliability: reset after a kill")

    plan = [("register", p) for p in POINTS if p.startswith("register.")]
    plan += [(a, p) for a in ("promote", "rollback") for p in POINTS if not p.startswith("register.")]
    for action, point in plan:
        reg = Registry(root, cfg)
        if action == "register":
            before = reg.production_tag()
            killed = crash(point, lambda r: r.register(artifact, evidence))
            expect = {before}
        elif action == "promote":
            settle(reg, good)
            killed = crash(point, lambda r: r.promote(other, reason="kill test"))
            expect = {good, other}
        else:
            settle(reg, other)
            killed = crash(point, lambda r: r.rollback(to=good, reason="kill test"))
            expect = {good, other}
        try:
            tag = check()
            ok = tag in expect
            err = None if ok else f"pointer names {tag}, expected one of {sorted(expect)}"
        except Exception as e:
            tag, ok, err = None, False, f"{type(e).__name__}: {e}"
        print(json.dumps({"action": action, "point": point, "killed": killed, "tag": tag, "ok": ok,
                          "error": err}), flush=True)
    settle(Registry(root, cfg), good)
    """
)


class Stream:
    """A client posting /score back to back in a thread; records every status."""

    def __init__(self, live: LiveServer) -> None:
        self.live = live
        self.body = body_of(live, 5)
        self.results: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.live.url, timeout=30) as c:
            while not self._stop.is_set():
                try:
                    r = c.post("/score", content=self.body, headers=JSON_HEADERS)
                    version = r.json().get("model_version", "") if r.status_code == 200 else r.text[:200]
                    self.results.append((r.status_code, version))
                except httpx.HTTPError as err:
                    self.results.append((0, repr(err)))

    def __enter__(self) -> Stream:
        self._thread.start()
        wait_for(lambda: len(self.results) >= 2, 30, "the request stream")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    @property
    def failures(self) -> list[tuple[int, str]]:
        return [r for r in self.results if r[0] != 200]


def _in_sync(live: LiveServer, tag: str) -> bool:
    info = httpx.post(f"{live.url}/model", timeout=10).json()
    return info.get("model_version") == tag and info.get("in_sync") is True


@pytest.fixture()
def restore_production(live: LiveServer) -> Iterator[None]:
    """Whatever a test does to the registry, production is the suite's model again afterwards."""
    good = live.tags["custom"]
    pointer, backup = live.registry.pointer_path, live.registry.backup_path
    saved = (pointer.read_bytes(), backup.read_bytes())
    yield
    pointer.write_bytes(saved[0])
    backup.write_bytes(saved[1])
    if live.registry.production_tag() != good:
        live.registry.promote(good, reason="reliability: restore")
    wait_for(lambda: _in_sync(live, good), SYNC_TIMEOUT_S, "the service back on the suite's model")


def test_kill_9_during_promotion_and_rollback_keeps_a_verified_pointer_and_serving(
    live: LiveServer, restore_production: None
) -> None:
    good, other = live.tags["custom"], live.tags["baseline"]
    artifact = live.root / "models" / "custom.skops"
    env = {**os.environ, "PLANTWATCH_ROOT": str(live.root), "BENTOML_HOME": str(live.root / ".bentoml")}
    with Stream(live) as stream:
        proc = subprocess.run(
            [sys.executable, "-c", KILLER, str(live.root), other, str(artifact)],
            env=env, capture_output=True, text=True, timeout=HELPER_TIMEOUT_S,
        )  # fmt: skip
        wait_for(lambda: _in_sync(live, good), SYNC_TIMEOUT_S, "the service back on the good model")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(REGISTER_POINTS) + 2 * len(MOVE_POINTS) >= MIN_KILL_POINTS
    assert all(r["killed"] for r in rows), [r for r in rows if not r["killed"]]
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    for r in rows:  # the commit point is the rename, for both directions
        if r["action"] == "promote":
            assert r["tag"] == (other if r["point"] in COMMITTED else good), r
        elif r["action"] == "rollback":
            assert r["tag"] == (good if r["point"] in COMMITTED else other), r
    assert not stream.failures, stream.failures[:5]
    _assert_consistent(live.registry)
    served = {v for _, v in stream.results}
    assert served <= {good, other}
    record_figure("kill -9 points (register+promote+rollback)", f"{len(rows)}", f">= {MIN_KILL_POINTS}")
    record_figure("kill -9: invalid pointers after a kill", "0", "0")
    failed = f"{len(stream.failures)} / {len(stream.results)}"
    record_figure("kill -9: failed requests meanwhile", failed, "0")


RACE_ROUNDS = 20
LANE = 2


def test_two_promotions_at_once_20_rounds_are_serialised(project: Path, tmp_path: Path) -> None:
    reg = open_registry(project)
    tags = [
        reg.register(dump_model(tmp_path / f"m{i}.skops", seed=i), evidence(0.5 + i / 100)).tag
        for i in range(2 * LANE)
    ]
    lanes = {"p1": tags[:LANE], "p2": tags[LANE:]}
    env = {**os.environ, "PLANTWATCH_DELAY_AT": "pointer.after_read=0.02"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", RACER, str(project), name, str(RACE_ROUNDS), "60", *lane],
            env=env, stderr=subprocess.PIPE,
        )  # fmt: skip
        for name, lane in lanes.items()
    }
    t0 = time.monotonic()
    try:
        for r in range(RACE_ROUNDS):
            deadline = time.monotonic() + 60
            while not all((project / f"ready-{n}-{r}").exists() for n in lanes):
                assert time.monotonic() < deadline, "racers did not reach the barrier"
                assert all(p.poll() is None for p in procs.values()), "a racer died"
                time.sleep(0.005)
            (project / f"go-{r}").touch()
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"{name}: {err.decode()[-2000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    took = time.monotonic() - t0
    history = reg.history()
    lost = RACE_ROUNDS * len(tags) - len(history)
    assert lost == 0
    _assert_consistent(reg)
    for name, lane in lanes.items():
        mine = [(h["tag"], h["reason"]) for h in history if h["actor"] == name]
        assert mine == [(tag, f"{name}-{r}-{i}") for r in range(RACE_ROUNDS) for i, tag in enumerate(lane)]
    events = [(e["from"], e["to"]) for e in reg.audit_events() if e["event"] == "promote"]
    assert events == [(h["from"], h["tag"]) for h in history]
    interleaved = sum(1 for a, b in zip(history, history[1:], strict=False) if a["actor"] != b["actor"])
    assert interleaved > RACE_ROUNDS  # the two really ran at the same time
    record_figure("racing promotions: rounds x processes", f"{RACE_ROUNDS} x 2", "20 rounds")
    record_figure("racing promotions: lost updates", f"{lost} / {len(history)}", "0")
    record_figure("racing promotions: wall time (s)", f"{took:.1f}", "bounded")


def _tampered_version(live: LiveServer) -> str:
    tag = live.registry.register(live.root / "models" / "custom.skops", evidence(0.5)).tag
    artifact = live.registry.model_dir(tag) / "model.skops"
    artifact.write_bytes(artifact.read_bytes() + b"tampered")
    return tag


def _hand_write_pointer(live: LiveServer, tag: str) -> None:
    """What an operator (or attacker) editing production.json by hand would leave: a valid document."""
    state = live.registry.pointer()
    entry = {"tag": tag, "from": state.current, "at": "2030-01-01T00:00:00Z", "actor": "hand",
             "reason": "hand edit", "action": "promote"}  # fmt: skip
    new = PointerState(current=tag, history=(*state.history, entry))
    reg = live.registry
    write_pointer(reg.pointer_path, reg.backup_path, new, reg.cfg.model_name, entry["at"])


def _model_info(live: LiveServer) -> dict[str, Any]:
    return httpx.post(f"{live.url}/model", timeout=10).json()


def test_tampered_artifact_or_pointer_is_refused_and_the_service_keeps_its_model(
    live: LiveServer, restore_production: None
) -> None:
    good = live.tags["custom"]
    bad = _tampered_version(live)
    with Stream(live) as stream:
        # 1. promoting a tampered version: refused by the registry, pointer untouched
        with pytest.raises(Exception, match="integrity check failed") as refused:
            live.registry.promote(bad, reason="tampered")
        assert live.registry.production_tag() == good

        # 2. the pointer edited by hand to name the tampered version: the service refuses to load it
        _hand_write_pointer(live, bad)
        wait_for(lambda: _model_info(live).get("production_version") == bad, SYNC_TIMEOUT_S, "the poll")
        wait_for(lambda: _model_info(live).get("last_reload_error"), SYNC_TIMEOUT_S, "the reload error")
        info = _model_info(live)
        assert info["model_version"] == good and info["in_sync"] is False
        assert "integrity" in info["last_reload_error"]
        assert httpx.get(f"{live.url}/readyz").status_code == 200  # still serving a verified model

        # 3. the pointer naming a version that does not exist
        _hand_write_pointer(live, "plantwatch-detector:20300101-000000-000000-ffffff")
        wait_for(lambda: "20300101" in str(_model_info(live).get("last_reload_error")), SYNC_TIMEOUT_S,
                 "the unknown-version error")  # fmt: skip
        assert _model_info(live)["model_version"] == good

        # 4. the pointer file replaced by garbage: the backup is used, never a crash or a reload
        live.registry.pointer_path.write_bytes(b"{not json")
        time.sleep(1.0)
        info = _model_info(live)
        assert info["model_version"] == good
    assert not stream.failures, stream.failures[:5]
    assert {v for _, v in stream.results} == {good}  # not one answer from the tampered model
    record_figure("tampered artifact/pointer: answers from tampered model", "0",
                  f"0 of {len(stream.results)} requests")
    assert "refusing to use it" in str(refused.value)  # the message says what happened and what it did
    record_figure("tampered: promotion of a tampered version", "refused", "'integrity check failed'")
