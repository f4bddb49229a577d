"""The local stack as the pipeline benchmarks start it: free ports, the stub models of
``config/models.local.yaml``, no dashboard, an API key, and the stub's fault switch."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class BenchStack:
    stack: Any  # stack.runner.LocalStack
    registry: Any  # core.registry.ModelRegistry
    data_root: Path
    api_key: str

    @property
    def stub_url(self) -> str:
        return self.stack.env["ROUTER_STUB_URL"]

    def set_stub_faults(self, **fault: float) -> None:
        """The same stub behaviour (``delay_s``, ``token_delay_s``, ...) for every model of the registry."""
        httpx.post(f"{self.stub_url.removesuffix('/v1')}/_stub/faults", timeout=5, json={"faults": {
            spec.provider_model_id: fault for spec in self.registry.models}}).raise_for_status()


def machine_line() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def report(results: dict, console: Console, json_path: Path | None) -> None:
    """Print the results as JSON, and write them to ``json_path`` when one was given."""
    text = json.dumps(results, indent=2)
    console.print(text)
    if json_path:
        json_path.write_text(text + "\n")


@contextmanager
def benchmark_stack(prefix: str, *, workers: int = 1, console: Console | None = None) -> Iterator[BenchStack]:
    """Start Tansu, an embedded Postgres, the stub, ``workers`` Faust workers and the API; stop them all after."""
    from core.settings import get_settings
    from stack.demo import demo_key
    from stack.runner import LocalStack
    from stack.services import free_port
    from stream_processors.runtime import load_registry

    os.environ.setdefault("ROUTER_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    os.environ.setdefault("ROUTER_API_PORT", str(free_port()))
    os.environ.pop("ROUTER_STUB_URL", None)
    os.environ["ROUTER_MODELS_CONFIG"] = str(REPO_ROOT / "config" / "models.local.yaml")
    get_settings.cache_clear()
    data_root = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    stack = LocalStack(get_settings(), data_root=data_root, workers=workers, dashboard=False,
                       console=console or Console())
    try:
        stack.start()
        api_key = asyncio.run(demo_key(stack.settings, tenant="benchmark"))
        yield BenchStack(stack, load_registry(stack.settings), data_root, api_key)
    finally:
        stack.stop()


def read_stack_processes(stack, data_root: Path, read: Callable[[str, Any], float]) -> Iterator[tuple[str, float]]:
    """(part, ``read(part, process)``) for every process of the running stack: each child's process tree under the
    child's name, the Postgres server and backends serving ``data_root`` under "postgres", and this process (the
    load generator) last; a process that ends meanwhile is skipped. Needs psutil; yields nothing without it."""
    try:
        import psutil  # optional: without it the benchmarks report no per-process figures
    except ImportError:
        return

    def tree(root):
        try:
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return [root]

    def processes():
        seen: set[int] = set()
        for member in stack.children.members:
            try:
                root = psutil.Process(member.process.pid)
            except psutil.Error:
                continue
            for proc in tree(root):
                seen.add(proc.pid)
                yield member.name, proc
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmdline = " ".join(proc.info.get("cmdline") or [])
            if proc.pid not in seen and "postgres" in (proc.info.get("name") or "") and str(data_root) in cmdline:
                for child in tree(proc):
                    yield "postgres", child
        yield "load generator", psutil.Process()

    for part, proc in processes():
        try:
            yield part, read(part, proc)
        except psutil.Error:
            continue
