"""Restarts the local stack's children when they die: backoff between restarts, a restart budget per child.

A child that dies is started again after a backoff that doubles per recent restart (1 s, 2 s, 4 s, ... up
to ``backoff_max_s``). A child that has used its budget (``max_restarts`` within ``window_s``) keeps
crashing: the supervisor gives up, and the runner tears the stack down with that child's log tail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from stack.processes import ManagedProcess

log = logging.getLogger(__name__)


class CrashLoop(RuntimeError):
    """A child died more often than its restart budget allows."""


@dataclass(frozen=True)
class RestartPolicy:
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    max_restarts: int = 5
    window_s: float = 300.0

    def backoff_s(self, recent_restarts: int) -> float:
        return min(self.backoff_initial_s * (2 ** recent_restarts), self.backoff_max_s)


@dataclass
class Supervised:
    managed: ManagedProcess
    # Starts the child again and returns its new handle; None: the child is not restarted (it has to stay up).
    restart: Callable[[], ManagedProcess] | None
    restarts: list[float] = field(default_factory=list)
    restart_at: float | None = None
    # Called after a successful restart (e.g. recreate topics on a broker that lost its log).
    after_restart: Callable[[], None] | None = None

    @property
    def name(self) -> str:
        return self.managed.name


class Supervisor:
    def __init__(self, policy: RestartPolicy | None = None, report: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or RestartPolicy()
        self.report = report or log.warning
        self.clock = clock
        self.children: list[Supervised] = []
        self.restart_count = 0

    def watch(self, managed: ManagedProcess, restart: Callable[[], ManagedProcess] | None,
              after_restart: Callable[[], None] | None = None) -> Supervised:
        supervised = Supervised(managed, restart, after_restart=after_restart)
        self.children.append(supervised)
        return supervised

    def poll(self) -> list[str]:
        """Check every child once: schedule a restart for a dead one, restart those whose backoff is over.
        Returns the names restarted now. Raises ``CrashLoop`` for a child that keeps crashing."""
        now = self.clock()
        restarted = []
        for child in self.children:
            if child.managed.alive:
                continue
            if child.restart_at is None:
                child.restarts = [t for t in child.restarts if now - t < self.policy.window_s]
                code = child.managed.process.returncode
                if child.restart is None or len(child.restarts) >= self.policy.max_restarts:
                    why = ("it is not restartable" if child.restart is None else
                           f"{len(child.restarts)} restarts in the last {self.policy.window_s:g}s")
                    raise CrashLoop(f"{child.name} exited with code {code} and is not restarted ({why}); last log "
                                    f"lines ({child.managed.log_path}):\n{child.managed.log_tail()}")
                delay = self.policy.backoff_s(len(child.restarts))
                child.restart_at = now + delay
                self.report(f"{child.name} exited with code {code}; restarting in {delay:g}s "
                            f"(restart {len(child.restarts) + 1} of {self.policy.max_restarts} allowed per "
                            f"{self.policy.window_s:g}s)")
            if now >= child.restart_at:
                child.restart_at = None
                child.restarts.append(now)
                self.restart_count += 1
                child.managed = child.restart()
                if child.after_restart is not None:
                    child.after_restart()
                self.report(f"{child.name} restarted (pid {child.managed.process.pid})")
                restarted.append(child.name)
        return restarted
