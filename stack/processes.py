"""Child processes of the local stack: started with their logs in files, health-checked, stopped in order."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen
    log_path: Path | None = None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM the child's process group, wait, then SIGKILL what is left."""
        if self.alive:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        return self.process.returncode


def fresh_log(log_path: Path) -> Path:
    """Keep the previous run's log as ``<name>.log.1`` so health checks read only this run's lines."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if log_path.exists():
        log_path.replace(log_path.with_name(log_path.name + ".1"))
    return log_path


def spawn(name: str, command: Sequence[str], log_path: Path, env: dict[str, str], cwd: Path) -> ManagedProcess:
    fresh_log(log_path)
    with open(log_path, "ab") as log_file:
        # Own session: a Ctrl-C in the terminal reaches the runner only, which stops children in order.
        process = subprocess.Popen(list(command), stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   start_new_session=True)
    return ManagedProcess(name, process, log_path)


def wait_until(check: Callable[[], bool], what: str, timeout_s: float, processes: Sequence[ManagedProcess] = (),
               interval_s: float = 0.25) -> None:
    """Poll ``check`` until true; fail early, with the log tail, if a watched process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for managed in processes:
            if not managed.alive:
                raise RuntimeError(f"{managed.name} exited with code {managed.process.returncode} while waiting for "
                                   f"{what}; last log lines ({managed.log_path}):\n{managed.log_tail()}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        time.sleep(interval_s)
    tails = "\n".join(f"--- {m.name} ({m.log_path}):\n{m.log_tail()}" for m in processes)
    raise TimeoutError(f"{what}: not ready after {timeout_s:.0f}s\n{tails}")


@dataclass
class ProcessGroup:
    """Started children, stopped in reverse start order."""

    members: list[ManagedProcess] = field(default_factory=list)

    def add(self, managed: ManagedProcess) -> ManagedProcess:
        self.members.append(managed)
        return managed

    def replace(self, name: str, managed: ManagedProcess) -> None:
        """A restarted child takes its predecessor's place (and so its place in the stop order)."""
        for index, member in enumerate(self.members):
            if member.name == name:
                self.members[index] = managed
                return
        self.members.append(managed)

    def dead(self) -> list[ManagedProcess]:
        return [m for m in self.members if not m.alive]

    def stop_all(self, report: Callable[[str], None] = print) -> None:
        for managed in reversed(self.members):
            code = managed.stop()
            # uvicorn re-raises SIGTERM after its graceful shutdown, so a negative code is a clean stop too.
            how = f"signal {-code}" if code is not None and code < 0 else f"exit {code}"
            report(f"stopped {managed.name} ({how})")
        self.members.clear()
