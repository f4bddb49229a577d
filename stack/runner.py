"""Starts the whole local stack on loopback, runs the demo, and keeps it up until Ctrl-C.

    python -m stack [--sample 200] [--data-dir DIR]   # replay real recorded outcomes (needs the data)
    python -m stack --stub [--demo-prompts N]          # stub models instead
    common: [--workers N] [--api-workers N] [--exit-after-demo] [--no-dashboard]

With the outcomes data (ROUTER_DATA_DIR or --data-dir) the demo replays real recorded answers; without
it, or with --stub, the local OpenAI-compatible stub stands in for the models.

Broker: Tansu (memory engine) at ROUTER_KAFKA_BOOTSTRAP. Database: PG_DSN when set, else an embedded
Postgres under .data/pg. Models: the registry at ROUTER_MODELS_CONFIG; the stub server stands in for
paid endpoints and its address goes to ROUTER_STUB_URL. Logs: .data/logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
from rich.console import Console

from core.settings import PROJECT_ROOT, Settings, get_settings
from core.topics import ensure_pipeline_topics
from sql.migrate import apply_migrations
from stack.processes import ManagedProcess, ProcessGroup, fresh_log, spawn, wait_until
from stack.services import (
    create_database,
    free_port,
    start_embedded_postgres,
    start_tansu,
    stop_embedded_postgres,
)
from stack.supervisor import RestartPolicy, Supervisor
from stream_processors.runtime import load_registry

DATABASE_NAME = "router"


class StackError(RuntimeError):
    pass


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.split(",")[0].rpartition(":")
    return host or "127.0.0.1", int(port)


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class LocalStack:
    def __init__(self, settings: Settings, *, data_root: Path, workers: int = 1, api_workers: int = 1,
                 dashboard: bool = True, console: Console | None = None,
                 router_ready: Callable[[], Path | None] | None = None) -> None:
        self.settings = settings
        # Called before the workers start: waits for the router the demo trains meanwhile, and gives its artifact.
        self.router_ready = router_ready
        self.data_root = data_root
        self.log_dir = data_root / "logs"
        self.workers = workers
        self.api_workers = api_workers
        self.dashboard = dashboard
        self.console = console or Console()
        self.children = ProcessGroup()
        # Children that die are started again (with backoff, within a restart budget) instead of taking the
        # stack down: the broker buffers the work while a worker or the API restarts.
        self.supervisor = Supervisor(RestartPolicy(), report=lambda line: self.console.print(f"[yellow]{line}[/yellow]"))
        self.env: dict[str, str] = {}
        self._postgres = None
        self.api_url = f"http://{settings.api_host}:{settings.api_port}"
        self.dashboard_url: str | None = None

    def _ok(self, what: str, detail: str) -> None:
        self.console.print(f"[green]✓[/green] [bold]{what:<10}[/bold] {detail}")

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._start_broker()
        self._start_database()
        self._start_stub()
        # From here on every child and this process read the same settings.
        self.settings = self.settings.model_copy(update={
            "kafka_bootstrap": self.env["ROUTER_KAFKA_BOOTSTRAP"], "pg_dsn": self.env["ROUTER_PG_DSN"]})
        os.environ["ROUTER_STUB_URL"] = self.env["ROUTER_STUB_URL"]  # the registry file may refer to it
        registry = load_registry(self.settings)
        if self.router_ready is None:
            self._check_artifact(registry)
            self._create_topics_and_report(registry)
            self._start_workers()
            self._start_api()
            self._start_dashboard()
            return
        # The router is still training: the parts that do not route start meanwhile, the workers once it is there.
        self._create_topics_and_report(registry)
        api = self._start_api(wait_ready=False)
        self._start_dashboard()
        if (artifact := self.router_ready()) is not None:
            self.env["ROUTER_CLASSIFIER_ARTIFACT"] = str(artifact)
            self.settings = self.settings.model_copy(update={"classifier_artifact": artifact})
        self._check_artifact(registry)
        self._start_workers()
        self._wait_ready(api)

    def _check_artifact(self, registry) -> None:
        if self.settings.classifier_artifact:
            # Refuse a mismatched artifact here, with its message, rather than as a worker that died.
            from routing.artifact import check_artifact_ladder  # noqa: PLC0415

            check_artifact_ladder(self.settings.classifier_artifact, registry,
                                  allow_mismatch=self.settings.allow_artifact_mismatch)

    def _create_topics_and_report(self, registry) -> None:
        created = self._create_topics()
        self._ok("topics", f"{len(created)} created ({self.settings.topic_prompts}, "
                           f"{', '.join(self.settings.topic_route_prefix + m.name for m in registry.models)}, "
                           f"{self.settings.topic_completions}, {self.settings.topic_dead_letter})")

    def _watch(self, managed: ManagedProcess, restart, after_restart=None) -> ManagedProcess:
        self.children.add(managed)

        def restart_and_track() -> ManagedProcess:
            new = restart()
            self.children.replace(managed.name, new)
            return new

        self.supervisor.watch(managed, restart_and_track, after_restart=after_restart)
        return managed

    def _create_topics(self) -> list[str]:
        # The local broker keeps its log in memory: after a restart every topic is created again at its
        # configured partition count before the clients reconnect and could auto-create it at the default.
        return asyncio.run(ensure_pipeline_topics(self.settings, load_registry(self.settings)))

    def _start_broker(self) -> None:
        host, port = _host_port(self.settings.kafka_bootstrap)
        if _port_in_use(host, port):
            raise StackError(f"port {port} is taken: is another stack running? Set ROUTER_KAFKA_BOOTSTRAP to "
                             f"127.0.0.1:<free port>")

        def start() -> ManagedProcess:
            log_path = fresh_log(self.log_dir / "tansu.log")
            return ManagedProcess("broker", start_tansu(port, log_path=log_path), log_path)

        self._watch(start(), start, after_restart=self._create_topics)
        self.env["ROUTER_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{port}"
        self._ok("broker", f"Tansu (memory engine) on 127.0.0.1:{port}")

    def _start_database(self) -> None:
        if self.settings.pg_dsn:
            dsn = self.settings.pg_dsn
            where = "PG_DSN"
        else:
            self._postgres, admin_dsn = start_embedded_postgres(self.data_root / "pg")
            dsn = create_database(admin_dsn, DATABASE_NAME)
            where = f"embedded, data in {self.data_root / 'pg'}"
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            conn.execute("SELECT 1")
        applied = apply_migrations(dsn)
        self.env["ROUTER_PG_DSN"] = dsn
        self.env.pop("PG_DSN", None)
        self._ok("postgres", f"{where}; migrations applied now: {', '.join(applied) or 'none pending'}")

    def _start_stub(self) -> None:
        if os.environ.get("ROUTER_STUB_URL"):
            self.env["ROUTER_STUB_URL"] = os.environ["ROUTER_STUB_URL"]
            self._ok("models", f"stub at {self.env['ROUTER_STUB_URL']} (given)")
            return
        port = free_port()

        def start() -> ManagedProcess:
            return spawn("stub-models", [sys.executable, "-m", "stack.stub_server", "--port", str(port)],
                         self.log_dir / "stub.log", self.env, PROJECT_ROOT)

        stub = self._watch(start(), start)
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200,
                   "stub model server", 30, [stub])
        self.env["ROUTER_STUB_URL"] = f"http://127.0.0.1:{port}/v1"
        self._ok("models", f"OpenAI-compatible stub on 127.0.0.1:{port} (stands in for paid endpoints); "
                           f"registry {self.settings.models_config}")

    def _start_workers(self) -> None:
        started = []
        for number in range(1, self.workers + 1):
            env = {**self.env, "ROUTER_FAUST_DATA_DIR": str(self.data_root / "faust" / f"worker-{number}")}

            def start(number: int = number, env: dict[str, str] = env) -> ManagedProcess:
                return spawn(f"worker-{number}", [sys.executable, "-m", "stream_processors", "worker", "--loglevel",
                                                  "info"], self.log_dir / f"worker-{number}.log", env, PROJECT_ROOT)

            started.append(self._watch(start(), start))
        for managed in started:
            # Faust logs "Ready" once its agents run; the consumer group then assigns partitions.
            wait_until(lambda m=managed: "Ready" in m.log_path.read_text(errors="replace"), f"{managed.name}", 120,
                       [managed])
        self._ok("workers", f"{self.workers} Faust worker(s): classify, provider x{len(load_registry(self.settings).models)}"
                            f", sink (logs {self.log_dir}/worker-*.log)")

    def _start_api(self, wait_ready: bool = True) -> ManagedProcess:
        def start() -> ManagedProcess:
            return spawn("api", [sys.executable, "-m", "ingest", "--host", self.settings.api_host, "--port",
                                 str(self.settings.api_port), "--workers", str(self.api_workers)],
                         self.log_dir / "api.log", self.env, PROJECT_ROOT)

        api = self._watch(start(), start)
        wait_until(lambda: httpx.get(f"{self.api_url}/healthz", timeout=3).status_code == 200, "API /healthz", 60,
                   [api])
        self._ok("api", f"{self.api_url} ({self.api_workers} process(es); docs at {self.api_url}/docs)")
        if wait_ready:
            self._wait_ready(api)
        return api

    def _wait_ready(self, api: ManagedProcess) -> None:
        if self.workers:
            # Ready = workers hold every partition and the API has loaded what it loads in the background, so the
            # first requests (a demo's, a benchmark's) do not race those loads.
            try:
                wait_until(lambda: httpx.get(f"{self.api_url}/readyz", timeout=3).status_code == 200, "API /readyz",
                           90, [api])
                self._ok("ready", f"{self.api_url}/readyz answers 200")
            except TimeoutError:
                body = httpx.get(f"{self.api_url}/readyz", timeout=3).text
                self.console.print(f"[yellow]! not ready after 90 s, serving anyway: {body}[/yellow]")

    def _start_dashboard(self) -> None:
        app_file = PROJECT_ROOT / "dashboard" / "app.py"
        if not self.dashboard or not app_file.exists():
            return
        port = self.settings.dashboard_port

        def start() -> ManagedProcess:
            return spawn("dashboard", [sys.executable, "-m", "streamlit", "run", str(app_file), "--server.headless",
                                       "true", "--server.port", str(port), "--server.address", "127.0.0.1",
                                       "--browser.gatherUsageStats", "false"],
                         self.log_dir / "dashboard.log", self.env, PROJECT_ROOT)

        dash = self._watch(start(), start)
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=3).status_code == 200,
                   "dashboard", 90, [dash])
        self.dashboard_url = f"http://127.0.0.1:{port}"
        self._ok("dashboard", self.dashboard_url)

    def check_children(self) -> None:
        """Restart children that died (raises ``CrashLoop`` for one that keeps crashing)."""
        self.supervisor.poll()

    def stop(self) -> None:
        self.children.stop_all(lambda line: self.console.print(f"[dim]{line}[/dim]"))
        if self._postgres is not None:
            stop_embedded_postgres(self._postgres)
            self._postgres = None
            self.console.print("[dim]stopped embedded postgres[/dim]")


def _raise_interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1, help="Faust worker processes (default 1)")
    parser.add_argument("--api-workers", type=int, default=1, help="API processes (default 1)")
    parser.add_argument("--demo-prompts", type=int, default=None,
                        help="how many demo prompts to push (default: the built-in set)")
    parser.add_argument("--no-demo", action="store_true", help="start the stack without pushing demo prompts")
    parser.add_argument("--exit-after-demo", "--no-wait", dest="exit_after_demo", action="store_true",
                        help="shut down after the demo instead of waiting for Ctrl-C")
    parser.add_argument("--no-dashboard", action="store_true", help="do not start the Streamlit dashboard")
    parser.add_argument("--data-root", type=Path, default=PROJECT_ROOT / ".data",
                        help="folder for the embedded database, logs and worker data (default .data/)")
    models = parser.add_mutually_exclusive_group()
    models.add_argument("--replay", action="store_true",
                        help="replay real recorded outcomes (config/models.demo.yaml) and print spend, accuracy and "
                             "savings vs always the expensive model (the default when the outcomes data is found)")
    models.add_argument("--stub", action="store_true",
                        help="use the local OpenAI-compatible stub models even when the outcomes data is there")
    parser.add_argument("--sample", type=int, default=200, help="--replay: how many outcomes prompts (default 200)")
    parser.add_argument("--simulate-days", type=int, default=0, metavar="N",
                        help="--replay: spread the sample's timestamps over the last N days so trend views show "
                             "trends (labelled simulated on the dashboard; default 0: real time)")
    parser.add_argument("--models", type=Path, default=None,
                        help="--replay: the replay models file (default config/models.demo.yaml; "
                             "config/models.demo-pool.yaml routes across the whole math/code pool)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="--replay: the outcomes data folder (default: ROUTER_DATA_DIR)")
    parser.add_argument("--router", choices=("trained", "heuristic"), default="trained",
                        help="--replay: route with a router trained from the data at start (cached under "
                             "<data root>/demo-router/; the default) or with the seed heuristic. "
                             "ROUTER_CLASSIFIER_ARTIFACT, when set, is used instead of either")
    args = parser.parse_args(argv)
    settings = get_settings()
    data_dir = args.data_dir or settings.data_dir
    if not args.stub and not args.replay and data_dir is not None and (Path(data_dir) / "outcomes").is_dir():
        args.replay = True
    if args.replay:
        if data_dir is None or not (Path(data_dir) / "outcomes").is_dir():
            parser.error(f"--replay needs the outcomes data: set ROUTER_DATA_DIR or pass --data-dir "
                         f"(no outcomes/ folder under {data_dir})")
        # The workers read these from the environment they inherit.
        os.environ["ROUTER_MODELS_CONFIG"] = str((args.models or PROJECT_ROOT / "config" / "models.demo.yaml").resolve())
        os.environ["ROUTER_DATA_DIR"] = str(Path(data_dir).resolve())
        settings = settings.model_copy(update={"models_config": Path(os.environ["ROUTER_MODELS_CONFIG"]),
                                               "data_dir": Path(os.environ["ROUTER_DATA_DIR"])})

    console = Console()
    demo_router, training = plan_router(args, settings, data_dir, console)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # A shell starting us in the background without job control leaves SIGINT ignored, and Python then
    # keeps it ignored; Ctrl-C (or `kill -INT`) must still stop the stack.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    def router_ready() -> Path | None:
        nonlocal demo_router
        if training is not None:
            demo_router = training.wait()
        return demo_router.artifact if demo_router is not None else None

    stack = LocalStack(settings, data_root=args.data_root, workers=args.workers, api_workers=args.api_workers,
                       dashboard=not args.no_dashboard, console=console, router_ready=router_ready)
    code = 0
    try:
        console.rule("[bold]starting the local stack")
        stack.start()
        if args.replay and not args.no_demo:
            from stack.demo import run_replay_demo  # noqa: PLC0415

            console.rule("[bold]replay demo")
            asyncio.run(run_replay_demo(stack.settings, console=console, sample=args.sample,
                                        simulate_days=args.simulate_days, demo_router=demo_router))
        elif not args.no_demo:
            from stack.demo import run_demo  # noqa: PLC0415

            console.rule("[bold]demo")
            asyncio.run(run_demo(stack.settings, stack.api_url, console=console, limit=args.demo_prompts,
                                 demo_router=demo_router))
        console.rule("[bold]running")
        console.print(f"API        {stack.api_url}   (docs {stack.api_url}/docs; every route but /healthz needs a "
                      f"key: python -m ingest.keys create --tenant you)")
        if stack.dashboard_url:
            console.print(f"Dashboard  {stack.dashboard_url}")
        console.print(f"Logs       {stack.log_dir}")
        if args.exit_after_demo:
            return 0
        console.print("Press Ctrl-C to stop.")
        while True:
            stack.check_children()
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("\nshutting down…")
    except Exception as exc:  # noqa: BLE001 - report clearly, then shut everything down
        console.print(f"[red]error:[/red] {exc}")
        code = 1
    finally:
        if training is not None:
            training.stop()
        stack.stop()
    return code


def plan_router(args: argparse.Namespace, settings: Settings, data_dir: Path | None, console: Console):
    """Which router the demo routes with: ``(DemoRouter or None, DemoRouterTraining or None)``.

    Replay with the data: a router trained from it (started here, in a child process, while the stack starts),
    unless ``--router heuristic`` or ROUTER_CLASSIFIER_ARTIFACT (the user's own artifact: named from its rows).
    Otherwise the seed heuristic, with what is missing said here and in the savings line."""
    from stack.demo import REPLAY_LADDER_SOURCES, ladder_records, replay_sample  # noqa: PLC0415
    from stack.demo_router import MIN_TRAIN_PROMPTS, DemoRouterTraining, heuristic_router  # noqa: PLC0415

    if settings.classifier_artifact:
        return None, None
    if not args.replay:
        reason = ("--stub: the stub models have no recorded answers to train on" if args.stub else
                  "no outcomes data to train it on: set ROUTER_DATA_DIR or pass --data-dir")
        console.print(f"[yellow]no trained router[/yellow] ({reason}); routing with the seed heuristic")
        return heuristic_router(reason), None
    if args.router == "heuristic":
        return heuristic_router("chosen with --router heuristic"), None
    registry = load_registry(settings)
    if registry.pool:
        console.print("[yellow]no demo router for a pool registry[/yellow]: train one with `python -m training.train "
                      "--pool ...` and set ROUTER_CLASSIFIER_ARTIFACT; routing with the seed heuristic")
        return heuristic_router("the demo trains ladder routers only; see docs/classifier.md for pools"), None
    records = ladder_records(Path(data_dir), registry)
    held_out = [record.id for record in replay_sample(Path(data_dir), registry, args.sample, records=records)]
    if len(records) - len(held_out) < MIN_TRAIN_PROMPTS:
        reason = (f"only {len(records) - len(held_out)} recorded prompts beside the {len(held_out)} replayed to "
                  f"train on (it needs {MIN_TRAIN_PROMPTS})")
        console.print(f"[yellow]no trained router[/yellow] ({reason}); routing with the seed heuristic")
        return heuristic_router(reason), None
    training = DemoRouterTraining(registry, Path(data_dir), REPLAY_LADDER_SOURCES, held_out, args.data_root,
                                  console, args.data_root / "logs")
    return None, training.start()
