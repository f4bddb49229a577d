"""Stream processor commands.

    python -m stream_processors worker          # run a Faust worker (run several for more throughput)
    python -m stream_processors create-topics   # create every topic at its final partition count
"""

from __future__ import annotations

import argparse
import asyncio
import logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream_processors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="run a Faust worker: classify, providers and sink agents")
    worker.add_argument("--loglevel", default="info")
    commands.add_parser("create-topics", help="create the pipeline's topics (idempotent)")
    args = parser.parse_args(argv)

    from core.settings import get_settings  # noqa: PLC0415 - keep --help fast

    settings = get_settings()
    if args.command == "create-topics":
        from core.topics import ensure_pipeline_topics  # noqa: PLC0415
        from stream_processors.runtime import load_registry  # noqa: PLC0415

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        created = asyncio.run(ensure_pipeline_topics(settings, load_registry(settings)))
        print(f"created {len(created)} topic(s): {', '.join(created) or 'all existed'}")
        return 0

    import faust  # noqa: PLC0415

    from stream_processors.app import create_app  # noqa: PLC0415

    app = create_app(settings)
    # One INFO line per model call is noise at hundreds of calls a second; failures are logged as attempts.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from core.logs import quiet_repeated_kafka_errors  # noqa: PLC0415

    quiet_repeated_kafka_errors()
    faust.Worker(app, loglevel=args.loglevel).execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
