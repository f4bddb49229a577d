"""Run the ingest API: ``python -m ingest [--host H] [--port P] [--workers N]``.

Each worker process is its own API instance with its own reply topic.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    import uvicorn  # noqa: PLC0415

    from core.settings import get_settings  # noqa: PLC0415

    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m ingest", description=__doc__)
    parser.add_argument("--host", default=settings.api_host)
    parser.add_argument("--port", type=int, default=settings.api_port)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    uvicorn.run("ingest.api.main:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level=args.log_level, timeout_keep_alive=settings.api_keep_alive_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
