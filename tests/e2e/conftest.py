"""One running pipeline for the end-to-end tests: its own database and topics on the session's Tansu, a real
Faust worker and the real API each in their own process, and the stub model server over real HTTP."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from core.settings import Settings
from core.topics import ensure_pipeline_topics
from sql.migrate import apply_migrations
from stack.processes import ManagedProcess, spawn, wait_until
from stack.services import create_database, drop_database, free_port
from stream_processors.runtime import load_registry

REPO_ROOT = Path(__file__).resolve().parents[2]

MODELS_YAML = """
counterfactual: big
models:
  - {name: small, tier: cheap, base_url: "${ROUTER_STUB_URL}", model_id: stub-small, context_window: 4096,
     api_key_env: ROUTER_STUB_API_KEY,
     prices: {input: 0.13, output: 0.52}, timeout_s: 30, max_retries: 0}
  - {name: medium, tier: mid, base_url: "${ROUTER_STUB_URL}", model_id: stub-medium, context_window: 8192,
     prices: {input: 0.59, output: 0.79}, timeout_s: 30, max_retries: 0, supports_tools: true}
  - {name: big, tier: expensive, base_url: "${ROUTER_STUB_URL}", model_id: stub-big, context_window: 128000,
     prices: {input: 2.5, output: 10.0}, timeout_s: 30, max_retries: 0, supports_tools: true}
"""


@dataclass
class Pipeline:
    settings: Settings
    env: dict[str, str]
    api_url: str
    stub_url: str
    dsn: str
    worker: ManagedProcess
    api: ManagedProcess
    log_dir: Path
    # The key every test call to the API sends (as the openai SDK's ``api_key`` or in ``auth_headers``).
    api_key: str = "unused"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def start_api(self, name: str) -> tuple[ManagedProcess, str]:
        port = free_port()
        api = spawn(name, [sys.executable, "-m", "ingest", "--port", str(port), "--log-level", "warning"],
                    self.log_dir / f"{name}.log", self.env, REPO_ROOT)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/healthz", timeout=3).status_code == 200, f"{name} /healthz", 120, [api])
        return api, url

    def create_key(self, *options: str) -> str:
        """A new key made with the key CLI, as an operator makes one (it prints the key alone on its last line)."""
        return self.keys_cli("create", *options).strip().splitlines()[-1]

    def keys_cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "ingest.keys", *args], env=self.env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def row(self, request_id: str) -> dict | None:
        with psycopg.connect(self.dsn, row_factory=psycopg.rows.dict_row) as conn:
            return conn.execute("SELECT * FROM requests WHERE request_id = %s", (request_id,)).fetchone()

    async def wait_for_row(self, request_id: str, timeout_s: float = 60, where=lambda row: True) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            row = self.row(request_id)
            if row is not None and where(row):
                return row
            self.check_alive()
            await asyncio.sleep(0.2)
        raise AssertionError(f"request {request_id} not recorded as expected within {timeout_s}s "
                             f"(worker log: {self.worker.log_path})")

    def check_alive(self) -> None:
        for managed in (self.worker, self.api):
            assert managed.alive, f"{managed.name} died:\n{managed.log_tail(40)}"

    def stub_faults(self, faults: dict, reset_calls: bool = True) -> None:
        base = self.stub_url.removesuffix("/v1")
        httpx.post(f"{base}/_stub/faults", json={"faults": faults, "reset_calls": reset_calls},
                   timeout=5).raise_for_status()

    def stub_calls(self) -> list[dict]:
        return httpx.get(f"{self.stub_url.removesuffix('/v1')}/_stub/calls", timeout=5).json()


@pytest.fixture(scope="module")
def pipeline(tansu_bootstrap: str, pg_admin_dsn: str, stub_server: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    suffix = uuid.uuid4().hex[:8]
    log_dir = tmp_path_factory.mktemp("e2e")
    models = log_dir / "models.yaml"
    models.write_text(MODELS_YAML)
    db_name = f"router_e2e_{suffix}"
    dsn = create_database(pg_admin_dsn, db_name)
    apply_migrations(dsn)
    api_port = free_port()
    env = {
        **os.environ, "PYTHONUNBUFFERED": "1",
        "ROUTER_KAFKA_BOOTSTRAP": tansu_bootstrap, "ROUTER_PG_DSN": dsn, "ROUTER_STUB_URL": stub_server,
        "ROUTER_MODELS_CONFIG": str(models), "ROUTER_FAUST_APP_ID": f"router-e2e-{suffix}",
        "ROUTER_FAUST_DATA_DIR": str(log_dir / "faust"), "ROUTER_TOPIC_PROMPTS": f"prompts-{suffix}",
        "ROUTER_TOPIC_COMPLETIONS": f"completions-{suffix}", "ROUTER_TOPIC_DEAD_LETTER": f"dead-letter-{suffix}",
        "ROUTER_TOPIC_ROUTE_PREFIX": f"route-{suffix}.", "ROUTER_TOPIC_REPLIES_PREFIX": f"replies-{suffix}.",
        "ROUTER_GENERATE_TIMEOUT_S": "30", "ROUTER_PROMPTS_PARTITIONS": "3", "ROUTER_ROUTE_PARTITIONS": "2",
        "ROUTER_COMPLETIONS_PARTITIONS": "2",
        "ROUTER_TOPIC_FEEDBACK": f"feedback-{suffix}", "ROUTER_FEEDBACK_WAIT_FOR_REQUEST_S": "2",
        # Secrets that must never show up in a log, row or dead letter (tests/e2e/test_access_e2e.py greps them).
        "ROUTER_API_KEY_PEPPER": f"e2e-pepper-{uuid.uuid4().hex}", "ROUTER_STUB_API_KEY": f"sk-e2e-{uuid.uuid4().hex}",
    }
    env.pop("PG_DSN", None)
    env.pop("ROUTER_CLASSIFIER_ARTIFACT", None)  # the seed heuristic: routing must not depend on local artifacts
    settings = Settings(_env_file=None).model_copy(update={
        "kafka_bootstrap": tansu_bootstrap, "pg_dsn": dsn, "models_config": models,
        "topic_prompts": env["ROUTER_TOPIC_PROMPTS"], "topic_completions": env["ROUTER_TOPIC_COMPLETIONS"],
        "topic_dead_letter": env["ROUTER_TOPIC_DEAD_LETTER"], "topic_route_prefix": env["ROUTER_TOPIC_ROUTE_PREFIX"],
        "topic_replies_prefix": env["ROUTER_TOPIC_REPLIES_PREFIX"], "prompts_partitions": 3, "route_partitions": 2,
        "completions_partitions": 2, "topic_feedback": env["ROUTER_TOPIC_FEEDBACK"]})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROUTER_STUB_URL", stub_server)  # the registry file refers to it
        asyncio.run(ensure_pipeline_topics(settings, load_registry(settings)))

    worker = spawn("worker", [sys.executable, "-m", "stream_processors", "worker"], log_dir / "worker.log", env,
                   REPO_ROOT)
    api = spawn("api", [sys.executable, "-m", "ingest", "--port", str(api_port), "--log-level", "warning"],
                log_dir / "api.log", env, REPO_ROOT)
    pipe = None
    try:
        api_url = f"http://127.0.0.1:{api_port}"
        wait_until(lambda: "Ready" in worker.log_path.read_text(errors="replace"), "Faust worker", 120, [worker])
        wait_until(lambda: httpx.get(f"{api_url}/healthz", timeout=3).status_code == 200, "API /healthz", 120, [api])
        pipe = Pipeline(settings, env, api_url, stub_server, dsn, worker, api, log_dir)
        pipe.api_key = pipe.create_key("--tenant", "default")
        # Warm up: the first prompt through proves the consumer group has its partitions.
        accepted = httpx.post(f"{api_url}/prompts", json={"prompt": "warm-up: what is 1 + 1?"}, timeout=30,
                              headers=pipe.auth_headers).json()
        asyncio.run(pipe.wait_for_row(accepted["request_id"], timeout_s=120))
        yield pipe
    finally:
        api.stop()
        worker.stop()
        if pipe is not None:  # a test may have replaced them (a restarted worker, another API)
            for managed in {id(pipe.worker): pipe.worker, id(pipe.api): pipe.api}.values():
                if managed is not worker and managed is not api:
                    managed.stop()
        drop_database(pg_admin_dsn, db_name)
