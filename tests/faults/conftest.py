"""A whole local stack per fault test, on its own broker, database and stub models, supervised like
``python -m stack`` supervises its children, with helpers to stream prompts, inject faults and count rows.

Every test streams prompts through the real API (a client that retries a refused or dropped request with
the same request id, as the API asks), injects one fault mid-stream, waits for every accepted request to
reach a terminal row, and compares the rows with the calls the stub model server counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml

from core.settings import Settings
from core.topics import ensure_pipeline_topics
from sql.migrate import apply_migrations
from stack.processes import ManagedProcess, fresh_log, spawn, wait_until
from stack.services import (
    create_database,
    drop_database,
    free_port,
    start_embedded_postgres,
    start_tansu,
    stop_embedded_postgres,
)
from stack.supervisor import RestartPolicy, Supervised, Supervisor
from stream_processors.runtime import load_registry
from tests.keys import new_key_sync

REPO_ROOT = Path(__file__).resolve().parents[2]
FIGURES = REPO_ROOT / ".data" / "fault-figures"

MODELS_YAML = """
counterfactual: big
models:
  - {name: small, tier: cheap, base_url: "${ROUTER_STUB_URL}", model_id: stub-small, context_window: 4096,
     prices: {input: 0.13, output: 0.52}, timeout_s: 30, max_retries: 0}
  - {name: medium, tier: mid, base_url: "${ROUTER_STUB_URL}", model_id: stub-medium, context_window: 8192,
     prices: {input: 0.59, output: 0.79}, timeout_s: 30, max_retries: 0}
  - {name: big, tier: expensive, base_url: "${ROUTER_STUB_URL}", model_id: stub-big, context_window: 128000,
     prices: {input: 2.5, output: 10.0}, timeout_s: 30, max_retries: 0}
"""
STUB_MODEL = {"small": "stub-small", "medium": "stub-medium", "big": "stub-big"}
# List price (input + output per 1M tokens) of each model: what the fallback cost cap compares.
LIST_PRICE = {m["name"]: m["prices"]["input"] + m["prices"]["output"] for m in yaml.safe_load(MODELS_YAML)["models"]}
TERMINAL = ("ok", "failed", "expired")


@dataclass
class StreamResult:
    accepted: list[str]
    prompts: dict[str, str]
    refusals: int
    retries: int
    seconds: float


@dataclass
class FaultStack:
    tmp: Path
    settings: Settings
    env: dict[str, str]
    dsn: str
    api_url: str
    stub_url: str
    supervisor: Supervisor
    children: dict[str, Supervised] = field(default_factory=dict)
    # The key every test call to the API sends.
    api_key: str = "unused"
    postgres: object | None = None
    supervision_error: BaseException | None = None
    # What the supervisor reported (restarts), in order.
    restarts: list[str] = field(default_factory=list)

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def pid(self, name: str) -> int:
        return self.children[name].managed.process.pid

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        os.killpg(self.pid(name), sig)

    def stub_faults(self, faults: dict, reset_calls: bool = False) -> None:
        httpx.post(f"{self.stub_url.removesuffix('/v1')}/_stub/faults", json={"faults": faults,
                                                                            "reset_calls": reset_calls},
                   timeout=5).raise_for_status()

    def stub_calls(self) -> list[dict]:
        return httpx.get(f"{self.stub_url.removesuffix('/v1')}/_stub/calls", timeout=10).json()

    async def stream(self, count: int, *, rate_per_s: float = 50.0, concurrency: int = 16,
                     at: int | None = None, fault: Callable[[], Awaitable[None]] | None = None,
                     give_up_s: float = 90.0) -> StreamResult:
        """POST ``count`` prompts to /prompts at about ``rate_per_s``; ``fault`` runs (as a task) once ``at`` of
        them have been sent. A refused (503) or dropped request is retried with its request id until accepted."""
        tag = uuid.uuid4().hex[:8]
        prompts = {uuid.uuid4().hex: f"[{tag}-{n}] What is {n} plus {n}?" for n in range(count)}
        accepted: list[str] = []
        refusals = retries = 0
        fault_task = None
        gate = asyncio.Semaphore(concurrency)
        started = time.monotonic()

        async def send(client: httpx.AsyncClient, request_id: str, prompt: str) -> None:
            nonlocal refusals, retries
            deadline = time.monotonic() + give_up_s
            async with gate:
                while time.monotonic() < deadline:
                    try:
                        response = await client.post(f"{self.api_url}/prompts", headers=self.auth_headers,
                                                     json={"prompt": prompt, "request_id": request_id})
                        if response.status_code == 202:
                            accepted.append(request_id)
                            return
                        assert response.status_code == 503, response.text
                        refusals += 1
                    except httpx.TransportError:
                        refusals += 1
                    retries += 1
                    await asyncio.sleep(0.5)

        async with httpx.AsyncClient(timeout=10) as client:
            tasks = []
            for n, (request_id, prompt) in enumerate(prompts.items()):
                if fault is not None and at is not None and n == at:
                    fault_task = asyncio.create_task(fault())
                tasks.append(asyncio.create_task(send(client, request_id, prompt)))
                await asyncio.sleep(1 / rate_per_s)
            await asyncio.gather(*tasks)
        if fault_task is not None:
            await fault_task
        return StreamResult(accepted, prompts, refusals, retries, time.monotonic() - started)

    def rows(self, request_ids: list[str]) -> dict[str, dict]:
        with psycopg.connect(self.dsn, row_factory=psycopg.rows.dict_row) as conn:
            rows = conn.execute("SELECT request_id, status, attempt_count, cost_micro_usd, prompt FROM requests"
                                " WHERE request_id = ANY(%s)", (request_ids,)).fetchall()
        return {row["request_id"]: row for row in rows}

    def wait_terminal(self, request_ids: list[str], timeout_s: float = 180) -> dict[str, dict]:
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_supervision()
            try:
                rows = self.rows(request_ids)
            except psycopg.OperationalError:
                rows = {}
            missing = [r for r in request_ids if r not in rows or rows[r]["status"] not in TERMINAL]
            if not missing:
                self.wait_calls_on_record(request_ids)
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(missing)} of {len(request_ids)} accepted requests have no terminal row "
                                     f"after {timeout_s:.0f}s (logs in {self.tmp}); e.g. {missing[:3]}")
            time.sleep(1)

    def wait_calls_on_record(self, request_ids: list[str], timeout_s: float = 30) -> None:
        """Call records a worker kept in memory while Postgres was slow or down are written soon after."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with psycopg.connect(self.dsn) as conn:
                on_record = conn.execute("SELECT count(*) FROM model_calls WHERE request_id = ANY(%s)",
                                         (request_ids,)).fetchone()[0]
            if on_record >= len(self.stub_calls()):
                return
            time.sleep(1)

    def check_supervision(self) -> None:
        if self.supervision_error is not None:
            raise AssertionError(f"supervision gave up: {self.supervision_error}")

    def accounting(self, stream: StreamResult, rows: dict[str, dict]) -> dict:
        """The calls the stub counted against the calls on record (``model_calls``, one row per call of every
        delivery) and against the attempts of the recorded answers (``request_attempts``)."""
        ids = list(rows)
        with psycopg.connect(self.dsn) as conn:
            # A model skipped while its circuit is open is an attempt row but no call.
            attempts = conn.execute(
                "SELECT count(*), coalesce(sum(cost_micro_usd), 0) FROM request_attempts WHERE request_id = ANY(%s)"
                " AND coalesce(error, '') NOT LIKE '%%circuit open%%'", (ids,)).fetchone()
            calls = conn.execute("SELECT request_id, model, status, cost_micro_usd FROM model_calls"
                                 " WHERE request_id = ANY(%s)", (ids,)).fetchall()
            # Every handling of a request that made calls is a delivery; beyond its first, one of a request that was
            # never parked is a redelivery, and one of a parked request is mostly a retry after its park.
            plain_deliveries, plain_requests, parked_deliveries = conn.execute(
                "SELECT count(*) FILTER (WHERE p.request_id IS NULL),"
                " count(DISTINCT d.request_id) FILTER (WHERE p.request_id IS NULL),"
                " count(*) FILTER (WHERE p.request_id IS NOT NULL) FROM (SELECT DISTINCT request_id, delivery"
                " FROM model_calls WHERE request_id = ANY(%s)) d"
                " LEFT JOIN parked_requests p ON p.request_id = d.request_id", (ids,)).fetchone()
            parked = conn.execute("SELECT count(*), coalesce(sum(parks), 0) FROM parked_requests"
                                  " WHERE request_id = ANY(%s)", (ids,)).fetchone()
        on_record = Counter((stream.prompts[request_id], STUB_MODEL[model]) for request_id, model, _s, _c in calls)
        # A call that failed before it reached the model (connection refused, timed out on the way) is on record
        # as an error, and the stub never saw it.
        errors = Counter((stream.prompts[request_id], STUB_MODEL[model]) for request_id, model, status, _c in calls
                         if status == "error")
        # A start record is written before its call: a worker killed between the two leaves a call on record as
        # "started" (cut off) that the stub never saw. Only such records, and errors, may lack a stub call.
        cut_off = Counter((stream.prompts[request_id], STUB_MODEL[model]) for request_id, model, status, _c in calls
                          if status == "started")
        ours = set(stream.prompts.values())
        counted = Counter((c["prompt"], c["model"]) for c in self.stub_calls() if c["prompt"] in ours)
        return {
            "accepted": len(stream.accepted), "recorded": len(rows),
            "statuses": dict(Counter(row["status"] for row in rows.values())),
            "client_retries": stream.retries, "stream_s": round(stream.seconds, 1),
            "stub_calls": sum(counted.values()), "calls_on_record": len(calls),
            "calls_not_on_record": sum((counted - on_record).values()),
            "records_without_call": sum(max(0, n - errors[k] - cut_off[k]) for k, n in (on_record - counted).items()),
            "failed_before_reaching_the_model": sum(min(n, errors[k]) for k, n in (on_record - counted).items()),
            "cut_off_before_reaching_the_model": sum(min(max(0, n - errors[k]), cut_off[k])
                                                     for k, n in (on_record - counted).items()),
            "deliveries": plain_deliveries + parked_deliveries, "redelivered_requests": plain_deliveries - plain_requests,
            "requests_parked": parked[0], "parks": parked[1], "deliveries_of_parked_requests": parked_deliveries,
            "answer_attempt_calls": attempts[0],
            "double_paid_calls": len(calls) - attempts[0],
            "calls_cut_off": sum(1 for c in calls if c[2] == "started"),
            "cost_micro_usd": sum(row["cost_micro_usd"] for row in rows.values()),
            "calls_cost_micro_usd": sum(c[3] or 0 for c in calls),
        }

    def fallback_spend(self, request_ids: list[str]) -> dict:
        """Calls to a model other than the one each request was routed to: count, spend, the highest list-price
        multiple of the routed model's among them, and what the same tokens cost at the routed model's prices;
        and the longest time from a request's creation to its terminal row."""
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute(
                "SELECT c.model, r.routed_model, count(*), coalesce(sum(c.cost_micro_usd), 0)::bigint,"
                " coalesce(sum(c.tokens_in), 0)::bigint, coalesce(sum(c.tokens_out), 0)::bigint FROM model_calls c"
                " JOIN requests r ON r.request_id = c.request_id WHERE c.request_id = ANY(%s)"
                " AND c.model <> r.routed_model GROUP BY c.model, r.routed_model", (request_ids,)).fetchall()
            slowest = conn.execute("SELECT max(completed_at - created_at) FROM requests WHERE request_id = ANY(%s)",
                                   (request_ids,)).fetchone()[0]
        prices = yaml.safe_load(MODELS_YAML)["models"]
        unit = {m["name"]: (m["prices"]["input"], m["prices"]["output"]) for m in prices}
        return {
            "fallback_calls": sum(n for _m, _r, n, *_ in rows),
            "fallback_spend_micro_usd": sum(cost for *_, cost, _ti, _to in rows),
            "fallback_at_routed_prices_micro_usd": round(sum(ti * unit[routed][0] + to * unit[routed][1]
                                                             for _m, routed, _n, _c, ti, to in rows)),
            "fallback_max_price_multiple": round(max((LIST_PRICE[model] / LIST_PRICE[routed]
                                                      for model, routed, *_ in rows), default=0.0), 2),
            "fallback_models": sorted({model for model, *_ in rows}),
            "slowest_request_s": round(slowest.total_seconds(), 1),
        }

    def deadlines(self, request_ids: list[str]) -> list:
        with psycopg.connect(self.dsn) as conn:
            return [row[0] for row in conn.execute("SELECT deadline_at FROM accepted_requests"
                                                   " WHERE request_id = ANY(%s)", (request_ids,)).fetchall()]

    def save_figures(self, name: str, figures: dict) -> None:
        FIGURES.mkdir(parents=True, exist_ok=True)
        (FIGURES / f"{name}.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        print(f"\n{name}: {json.dumps(figures, sort_keys=True)}")


def _supervise(stack: FaultStack, stop: threading.Event) -> None:
    while not stop.wait(0.25):
        try:
            stack.supervisor.poll()
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            stack.supervision_error = exc
            return


@pytest.fixture()
def fault_stack(request, pg_admin_dsn: str, tmp_path: Path) -> Iterator[FaultStack]:
    """``@pytest.mark.dedicated_postgres``: the test gets a Postgres server of its own (it stops it). Parametrized
    indirectly, the parameter is a dict of environment settings for this stack's processes."""
    dedicated = request.node.get_closest_marker("dedicated_postgres") is not None
    suffix = uuid.uuid4().hex[:8]
    lines: list[str] = []
    supervisor = Supervisor(RestartPolicy(backoff_initial_s=1, backoff_max_s=4, max_restarts=5, window_s=300),
                            report=lines.append)
    postgres = None
    if dedicated:
        postgres, admin_dsn = start_embedded_postgres(Path(f"/tmp/router-fault-pg-{suffix}"))
    else:
        admin_dsn = pg_admin_dsn
    db_name = f"router_fault_{suffix}"
    dsn = create_database(admin_dsn, db_name)
    apply_migrations(dsn)
    models = tmp_path / "models.yaml"
    models.write_text(MODELS_YAML)
    kafka_port, api_port, stub_port = free_port(), free_port(), free_port()
    bootstrap = f"127.0.0.1:{kafka_port}"
    stub_url = f"http://127.0.0.1:{stub_port}/v1"
    env = {
        **os.environ, "PYTHONUNBUFFERED": "1", "ROUTER_KAFKA_BOOTSTRAP": bootstrap, "ROUTER_PG_DSN": dsn,
        "ROUTER_STUB_URL": stub_url, "ROUTER_MODELS_CONFIG": str(models), "ROUTER_FAUST_APP_ID": f"router-fault-{suffix}",
        "ROUTER_FAUST_DATA_DIR": str(tmp_path / "faust"), "ROUTER_PROMPTS_PARTITIONS": "3",
        "ROUTER_ROUTE_PARTITIONS": "2", "ROUTER_COMPLETIONS_PARTITIONS": "2",
        # Faster than production so a test sees republishing within its run.
        "ROUTER_REPUBLISH_AFTER_S": "60", "ROUTER_RECONCILE_INTERVAL_S": "2", "ROUTER_REQUEST_DEADLINE_S": "300",
        "ROUTER_HEARTBEAT_INTERVAL_S": "1",
        **getattr(request, "param", {}),
    }
    env.pop("PG_DSN", None)
    env.pop("ROUTER_CLASSIFIER_ARTIFACT", None)
    settings = Settings(_env_file=None).model_copy(update={
        "kafka_bootstrap": bootstrap, "pg_dsn": dsn, "models_config": models, "prompts_partitions": 3,
        "route_partitions": 2, "completions_partitions": 2, "faust_app_id": env["ROUTER_FAUST_APP_ID"]})
    stack = FaultStack(tmp_path, settings, env, dsn, f"http://127.0.0.1:{api_port}", stub_url, supervisor,
                       api_key=new_key_sync(dsn, "default"), postgres=postgres, restarts=lines)

    def create_topics() -> None:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ROUTER_STUB_URL", stub_url)
            asyncio.run(ensure_pipeline_topics(settings, load_registry(settings)))

    def start_broker() -> ManagedProcess:
        log_path = fresh_log(tmp_path / "tansu.log")
        return ManagedProcess("broker", start_tansu(kafka_port, log_path=log_path), log_path)

    def start_stub() -> ManagedProcess:
        return spawn("stub", [sys.executable, "-m", "stack.stub_server", "--port", str(stub_port)],
                     tmp_path / "stub.log", env, REPO_ROOT)

    def start_worker() -> ManagedProcess:
        return spawn("worker", [sys.executable, "-m", "stream_processors", "worker"], tmp_path / "worker.log", env,
                     REPO_ROOT)

    def start_api() -> ManagedProcess:
        return spawn("api", [sys.executable, "-m", "ingest", "--port", str(api_port), "--log-level", "warning"],
                     tmp_path / "api.log", env, REPO_ROOT)

    stop = threading.Event()
    watcher = threading.Thread(target=_supervise, args=(stack, stop), daemon=True)
    try:
        stack.children["broker"] = supervisor.watch(start_broker(), start_broker, after_restart=create_topics)
        create_topics()
        stack.children["stub"] = supervisor.watch(start_stub(), start_stub)
        wait_until(lambda: httpx.get(f"{stub_url.removesuffix('/v1')}/healthz", timeout=1).status_code == 200,
                   "stub", 30, [stack.children["stub"].managed])
        stack.children["worker"] = supervisor.watch(start_worker(), start_worker)
        stack.children["api"] = supervisor.watch(start_api(), start_api)
        wait_until(lambda: httpx.get(f"{stack.api_url}/readyz", timeout=3).status_code == 200, "API /readyz", 120,
                   [stack.children["worker"].managed, stack.children["api"].managed])
        watcher.start()
        yield stack
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join(timeout=5)
        for name in ("api", "worker", "stub", "broker"):
            if name in stack.children:
                stack.children[name].managed.stop()
        if postgres is not None:
            stop_embedded_postgres(postgres)
            shutil.rmtree(postgres.pgdata, ignore_errors=True)
        else:
            drop_database(admin_dsn, db_name)
