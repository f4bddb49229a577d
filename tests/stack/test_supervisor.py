"""The supervisor restarts a dead child with backoff, logs each restart, and gives up on a crash loop."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stack.processes import ManagedProcess, spawn
from stack.supervisor import CrashLoop, RestartPolicy, Supervisor


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _child(tmp_path: Path, name: str, code: str) -> ManagedProcess:
    return spawn(name, [sys.executable, "-c", code], tmp_path / f"{name}.log", {}, tmp_path)


def _wait_dead(managed: ManagedProcess) -> None:
    managed.process.wait(timeout=10)


def test_dead_child_is_restarted_after_backoff_and_each_restart_is_logged(tmp_path):
    clock, lines = FakeClock(), []
    supervisor = Supervisor(RestartPolicy(backoff_initial_s=1, backoff_max_s=4, max_restarts=10, window_s=60),
                            report=lines.append, clock=clock)
    started = []

    def start() -> ManagedProcess:
        managed = _child(tmp_path, "worker", "import time; time.sleep(60)")
        started.append(managed)
        return managed

    first = _child(tmp_path, "worker", "raise SystemExit(3)")
    child = supervisor.watch(first, start)
    _wait_dead(first)
    assert supervisor.poll() == []  # scheduled, not yet restarted: backoff first
    assert "worker exited with code 3; restarting in 1s" in lines[0]
    clock.now += 0.5
    assert supervisor.poll() == []
    clock.now += 0.6
    assert supervisor.poll() == ["worker"]
    assert child.managed is started[0] and child.managed.alive
    assert "worker restarted" in lines[-1]
    # The second death in the window waits twice as long.
    child.managed.process.kill()
    _wait_dead(child.managed)
    supervisor.poll()
    assert "restarting in 2s" in lines[-1]
    clock.now += 2.1
    assert supervisor.poll() == ["worker"]
    assert supervisor.restart_count == 2
    for managed in started:
        managed.stop(timeout_s=5)


def test_child_that_keeps_crashing_ends_supervision_with_its_log(tmp_path):
    clock = FakeClock()
    supervisor = Supervisor(RestartPolicy(backoff_initial_s=1, backoff_max_s=1, max_restarts=2, window_s=60),
                            report=lambda line: None, clock=clock)

    def start() -> ManagedProcess:
        return _child(tmp_path, "api", "print('port taken'); raise SystemExit(1)")

    child = supervisor.watch(start(), start)
    for _ in range(2):
        _wait_dead(child.managed)
        supervisor.poll()
        clock.now += 1.1
        supervisor.poll()
    _wait_dead(child.managed)
    with pytest.raises(CrashLoop, match=r"(?s)api exited with code 1 .*2 restarts in the last 60s.*port taken"):
        supervisor.poll()


def test_restart_budget_refills_after_the_window(tmp_path):
    clock = FakeClock()
    supervisor = Supervisor(RestartPolicy(backoff_initial_s=1, max_restarts=1, window_s=10), report=lambda _: None,
                            clock=clock)

    def start() -> ManagedProcess:
        return _child(tmp_path, "stub", "raise SystemExit(0)")

    child = supervisor.watch(start(), start)
    _wait_dead(child.managed)
    supervisor.poll()
    clock.now += 1.1
    assert supervisor.poll() == ["stub"]
    _wait_dead(child.managed)
    clock.now += 11  # the earlier restart left the window
    supervisor.poll()
    clock.now += 1.1
    assert supervisor.poll() == ["stub"]
    _wait_dead(child.managed)
    with pytest.raises(CrashLoop):  # no budget left: one restart within the last 10 s
        supervisor.poll()
