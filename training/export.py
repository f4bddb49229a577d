"""Export logged requests with graded answers as an outcomes file (the format of the data README), so the
router can be trained on an operator's own traffic, alone or mixed with the reference data.

    python -m training.export --out traffic.jsonl.gz [--since 2026-01-01T00:00:00+00:00] [--until ...]
        [--tenant T] [--experiment EXP] [--source grader ...] [--models-config config/models.yaml]
    python -m training.train --data traffic.jsonl.gz [/work/shared/data/outcomes] --ladder CHEAP,MID,EXPENSIVE ...

One record per (tenant, prompt text): every model that answered that prompt in any logged request, with its
latest graded answer (``correct`` from the latest feedback of the given sources; ``input_tokens`` and
``output_tokens`` as billed; ``answer`` null: the log keeps the response, not a parsed answer). Models are
named by their ``model_id`` in the model registry, as in the reference data. Training uses the records that
hold all three ladder models: run the same prompts on each model (e.g. an experiment with a control arm per
model and ``--unit request``) to collect them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

from core.registry import ModelRegistry
from training.logs import group_by_prompt, load_logged


def registry_model_ids(models_config: Path | None) -> dict[str, str]:
    if models_config is None or not Path(models_config).is_file():
        return {}
    return {spec.name: spec.provider_model_id for spec in ModelRegistry.from_yaml(models_config).models}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="outcomes file to write (.jsonl.gz or .jsonl)")
    parser.add_argument("--dsn", help="Postgres DSN (default: ROUTER_PG_DSN / PG_DSN)")
    parser.add_argument("--since", type=datetime.fromisoformat)
    parser.add_argument("--until", type=datetime.fromisoformat)
    parser.add_argument("--tenant")
    parser.add_argument("--experiment")
    parser.add_argument("--source", action="append", help="feedback sources to trust (default: every source)")
    parser.add_argument("--models-config", type=Path, help="model registry naming each model's id (default: "
                                                           "ROUTER_MODELS_CONFIG)")
    parser.add_argument("--ladder", help="CHEAP,MID,EXPENSIVE: also count the records training can use")
    args = parser.parse_args(argv)
    import psycopg  # noqa: PLC0415

    from core.settings import get_settings  # noqa: PLC0415

    settings = get_settings()
    dsn = args.dsn or settings.pg_dsn
    if not dsn:
        parser.error("no database: pass --dsn or set ROUTER_PG_DSN / PG_DSN")
    with psycopg.connect(dsn) as conn:
        logged = load_logged(conn, since=args.since, until=args.until, tenant=args.tenant, experiment=args.experiment,
                             sources=args.source)
    logs = group_by_prompt(logged, registry_model_ids(args.models_config or settings.models_config))
    records = [log.to_record() for log in logs.values() if log.graded]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    opener = gzip.open if args.out.name.endswith(".gz") else open
    with opener(tmp, "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write(record.model_dump_json(exclude_none=True) + "\n")
    tmp.replace(args.out)  # the file appears whole or not at all
    per_model = Counter(model for record in records for model in record.outcomes)
    summary = {"requests": len(logged), "graded_requests": sum(1 for r in logged if r.answered and r.correct is not None),
               "records": len(records), "answers_per_model": dict(sorted(per_model.items())), "out": str(args.out)}
    if args.ladder:
        ladder = [m.strip() for m in args.ladder.split(",")]
        summary["records_with_the_whole_ladder"] = sum(1 for r in records if all(m in r.outcomes for m in ladder))
    print(json.dumps(summary, indent=2))
    return 0


def cli(argv: list[str] | None = None) -> int:
    try:
        return main(argv)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    sys.exit(cli())
