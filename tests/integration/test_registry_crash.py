"""Crash consistency and concurrency of the registry, with real processes.

* ``kill -9`` of ``plantwatch promote`` at each named point of a registration + promotion leaves
  the production pointer valid JSON naming a complete, hash-verified version (the old one before
  the atomic rename, the new one after it), and the next promotion succeeds and cleans up.
* Two processes promoting at once are serialised: no lost update, a consistent history chain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from plantwatch.config import load_params
from plantwatch.paths import ProjectPaths
from plantwatch.registry import Registry
from plantwatch.registry.faults import CRASH_ENV, DELAY_ENV, POINTS
from plantwatch.registry.pointer import parse_pointer
from plantwatch.registry.promotion import promote_from_gate
from tests.unit.test_registry_fixtures import dump_model, evidence, open_registry, write_gate_outputs

pytestmark = [pytest.mark.slow, pytest.mark.integration]

#: From this point on the new pointer is in place (the rename is the commit point).
COMMITTED = {"pointer.after_replace", "promote.after_pointer_write"}
REGISTER_POINTS = [p for p in POINTS if p.startswith("register.")]
POINTER_POINTS = [p for p in POINTS if not p.startswith("register.") and p != "pointer.after_read"]
SUBPROCESS_TIMEOUT_S = 120
BARRIER_TIMEOUT_S = 60

CLI = Path(sys.executable).parent / "plantwatch"


def _promote_in_process(root: Path) -> str:
    params = load_params(root / "params.yaml")
    reg = Registry(root, params.registry)
    return promote_from_gate(reg, ProjectPaths.at(root), params).version.tag


def _assert_consistent(reg: Registry) -> None:
    """Pointer file valid, history a chain, every production tag registered and intact."""
    doc = json.loads(reg.pointer_path.read_text())
    state = parse_pointer(doc, "file")
    previous = None
    for entry in state.history:
        assert entry["from"] == previous
        previous = entry["tag"]
    tag, model = reg.load_production()  # hash-verified load
    assert tag == state.current and model.threshold_ > 0


def _crash_in_child(point: str, action: Callable[[], object]) -> None:
    """Run ``action`` in a forked child that SIGKILLs itself at ``point``; fail if it survives.

    A fork (not a fresh interpreter) keeps each case well under a second; the state left on disk
    by a killed process is the same either way. One test below goes through the real CLI.
    """
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.environ[CRASH_ENV] = point
            action()
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"child ended with {status}"


def _assert_recovers(reg: Registry, root: Path) -> None:
    """The next run works (no stale lock, no debris left behind)."""
    write_gate_outputs(root, pr_auc=0.7, seed=3)
    newest = _promote_in_process(root)
    assert reg.production_tag() == newest
    _assert_consistent(reg)
    store_dirs = {p.name for p in reg.model_dir(newest).parent.iterdir() if p.is_dir()}
    assert store_dirs == {v.record.version for v in reg.versions()}
    assert not list(reg.folder.glob(".*.tmp"))


@pytest.mark.parametrize("point", REGISTER_POINTS)
def test_kill_9_during_registration_keeps_production_and_leaves_no_half_version(
    project: Path, point: str
) -> None:
    write_gate_outputs(project, pr_auc=0.5, seed=1)
    good = _promote_in_process(project)
    write_gate_outputs(project, pr_auc=0.6, seed=2)
    _crash_in_child(point, lambda: _promote_in_process(project))

    reg = open_registry(project)
    _assert_consistent(reg)
    assert reg.production_tag() == good
    versions = {v.tag: v.stage for v in reg.versions()}
    if point == "register.after_record_write":  # record written: a complete candidate
        assert sorted(versions.values()) == ["candidate", "production"]
    else:  # a store folder without a record is not a version
        assert versions == {good: "production"}
    _assert_recovers(reg, project)


@pytest.mark.parametrize("point", POINTER_POINTS)
def test_kill_9_during_pointer_update_leaves_a_valid_pointer(
    project: Path, point: str, tmp_path: Path
) -> None:
    write_gate_outputs(project, pr_auc=0.5, seed=1)
    good = _promote_in_process(project)
    reg = open_registry(project)
    new = reg.register(dump_model(tmp_path / "new.skops", seed=2), evidence(0.6)).tag
    _crash_in_child(point, lambda: open_registry(project).promote(new, reason="crash test"))

    _assert_consistent(reg)
    assert reg.production_tag() == (new if point in COMMITTED else good)
    _assert_recovers(reg, project)


def test_kill_9_of_the_cli_promote_keeps_the_old_pointer(project: Path) -> None:
    """The real ``plantwatch promote`` in a fresh interpreter, killed after writing the temp pointer."""
    write_gate_outputs(project, pr_auc=0.5, seed=1)
    good = _promote_in_process(project)
    write_gate_outputs(project, pr_auc=0.6, seed=2)
    env = {**os.environ, CRASH_ENV: "pointer.after_temp_write"}
    proc = subprocess.run(
        [str(CLI), "promote"], cwd=project, env=env, capture_output=True, timeout=SUBPROCESS_TIMEOUT_S
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    reg = open_registry(project)
    assert list(reg.folder.glob(".production.json.*.tmp"))  # killed between temp write and rename
    _assert_consistent(reg)
    assert reg.production_tag() == good
    assert sorted(v.stage for v in reg.versions()) == ["candidate", "production"]
    _assert_recovers(reg, project)


RACE_ROUNDS = 5
PER_PROCESS = 3
#: Two long-lived processes meet at a file barrier before each round, then promote their own lane.
RACER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from plantwatch.config import load_params
    from plantwatch.registry import Registry
    import bentoml.models  # warm imports before the start line

    root, name, rounds, timeout = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    lane = sys.argv[5:]
    reg = Registry(root, load_params(root / "params.yaml").registry)
    for r in range(rounds):
        (root / f"ready-{name}-{r}").touch()
        deadline = time.monotonic() + timeout
        while not (root / f"go-{r}").exists():
            if time.monotonic() > deadline:
                sys.exit("barrier timeout")
            time.sleep(0.002)
        for i, tag in enumerate(lane):
            reg.promote(tag, actor=name, reason=f"{name}-{r}-{i}")
    """
)


def test_concurrent_promotions_are_serialised_without_lost_updates(project: Path, tmp_path: Path) -> None:
    reg = open_registry(project)
    tags = [
        reg.register(dump_model(tmp_path / f"m{i}.skops", seed=i), evidence(0.5 + i / 100)).tag
        for i in range(6)
    ]
    lanes = {"p1": tags[:PER_PROCESS], "p2": tags[PER_PROCESS:]}
    env = {**os.environ, DELAY_ENV: "pointer.after_read=0.05"}  # widen the read-modify-write window
    args = [str(project), "", str(RACE_ROUNDS), str(BARRIER_TIMEOUT_S)]
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", RACER, *args[:1], name, *args[2:], *lane], env=env, stderr=subprocess.PIPE
        )
        for name, lane in lanes.items()
    }
    try:
        for r in range(RACE_ROUNDS):
            deadline = time.monotonic() + BARRIER_TIMEOUT_S
            while not all((project / f"ready-{n}-{r}").exists() for n in lanes):
                assert time.monotonic() < deadline, "racers did not reach the barrier"
                assert all(p.poll() is None for p in procs.values()), "a racer died"
                time.sleep(0.005)
            (project / f"go-{r}").touch()
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
            assert proc.returncode == 0, f"{name}: {err.decode()}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()

    history = reg.history()
    assert len(history) == RACE_ROUNDS * len(tags)  # no promotion lost
    _assert_consistent(reg)  # every entry's "from" is the previous entry's tag
    for name, lane in lanes.items():
        mine = [(h["tag"], h["reason"]) for h in history if h["actor"] == name]
        assert mine == [(tag, f"{name}-{r}-{i}") for r in range(RACE_ROUNDS) for i, tag in enumerate(lane)]
    events = [(e["from"], e["to"]) for e in reg.audit_events() if e["event"] == "promote"]
    assert events == [(h["from"], h["tag"]) for h in history]  # audit order == pointer order
