"""Shadow replay: what a candidate router would have spent and scored on logged traffic, calling no model.

    python -m training.replay_logs --artifact CANDIDATE --since 2026-01-01T00:00:00+00:00 [--until ...]
        [--tenant T] [--experiment EXP] [--source grader ...] [--models-config config/models.yaml] [--json OUT]

Each logged request is routed by the candidate (``Router.route``) and run through the live ladder executor
(``providers.executor.LadderExecutor``) with the candidate's answer checks, every model answering with what
the log holds for that prompt: its latest logged answer, billed tokens and grade. Calls are priced like the
live pipeline's (``cost_rates`` at the request's time). A request needing an answer the log does not hold is
not priced and is listed by reason; one whose final answer has no grade is priced but not scored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from core.messages import PromptMessage, RoutedMessage
from core.registry import ModelRegistry, ModelSpec
from providers.base import Provider, ProviderResult
from providers.costs import CostBook
from providers.executor import LadderExecutor
from providers.replay import truncated_text
from routing.factory import build_router, escalation_for
from routing.router import Router
from training.logs import LoggedRequest, PromptLog, group_by_prompt


class NotInLog(Exception):
    """The candidate needs an answer the log does not hold. Not a ProviderError: the executor must not fall back
    (that would price a different path than the candidate's)."""


class LoggedAnswerProvider(Provider):
    """Answers a prompt with the model's latest logged answer to it (by tenant and exact prompt text)."""

    def __init__(self, spec: ModelSpec, logs: dict[tuple[str, str], PromptLog]) -> None:
        super().__init__(spec)
        self.logs = logs

    async def complete(self, prompt: PromptMessage, max_output_tokens: int | None = None) -> ProviderResult:
        log = self.logs.get((prompt.tenant, prompt.prompt))
        answer = None if log is None else log.answers.get(self.spec.provider_model_id)
        if answer is None:
            raise NotInLog(f"no logged answer from {self.spec.name}")
        if max_output_tokens is not None and answer.output_tokens > max_output_tokens:
            # Cut off by the candidate's budget before its final answer (as the offline harness counts it).
            return ProviderResult(text=truncated_text(answer.response, answer.output_tokens, max_output_tokens),
                                  finish_reason="length", input_tokens=answer.input_tokens,
                                  output_tokens=max_output_tokens, latency_ms=0.0, usage_reported=True,
                                  correct=False)
        return ProviderResult(text=answer.response, finish_reason=answer.finish_reason or "stop",
                              input_tokens=answer.input_tokens, output_tokens=answer.output_tokens, latency_ms=0.0,
                              usage_reported=True, correct=answer.correct)


async def shadow_replay(requests: Sequence[LoggedRequest], router: Router, executor: LadderExecutor,
                        batch_size: int = 64) -> dict[str, Any]:
    """The candidate's spend and score against the logged ones, on the requests it can price."""
    priced: list[dict[str, Any]] = []
    unpriceable: dict[str, list[str]] = defaultdict(list)
    unscored: dict[str, list[str]] = defaultdict(list)
    for start in range(0, len(requests), batch_size):
        batch = requests[start:start + batch_size]
        prompts = [PromptMessage(request_id=r.request_id, prompt=r.prompt, tenant=r.tenant, user=r.user_id,
                                 max_tokens=r.max_tokens, metadata={k: str(v) for k, v in r.metadata.items()},
                                 created_at=r.created_at) for r in batch]
        for request, prompt, decision in zip(batch, prompts, router.route(prompts), strict=True):
            try:
                completion = await executor.run(RoutedMessage(prompt=prompt, decision=decision,
                                                              target_model=decision.model))
            except NotInLog as exc:
                unpriceable[str(exc)].append(request.request_id)
                continue
            if completion.status != "ok":
                unpriceable["the candidate's ladder failed on the logged answers"].append(request.request_id)
                continue
            if completion.correct is None:
                unscored[f"logged answer from {completion.final_model} has no grade"].append(request.request_id)
            priced.append({"request_id": request.request_id, "candidate_cost": completion.cost_micro_usd,
                           "logged_cost": request.cost_micro_usd, "candidate_model": completion.final_model,
                           "logged_model": request.final_model, "candidate_correct": completion.correct,
                           "logged_correct": request.correct if request.answered else None})
    scored = [p for p in priced if p["candidate_correct"] is not None and p["logged_correct"] is not None]
    candidate_spend = sum(p["candidate_cost"] for p in priced)
    logged_spend = sum(p["logged_cost"] for p in priced)
    models: dict[str, int] = defaultdict(int)
    for p in priced:
        models[p["candidate_model"]] += 1
    return {
        "requests": len(requests), "priced": len(priced), "scored": len(scored),
        "logged_spend_all_usd": sum(r.cost_micro_usd for r in requests) / 1e6,
        "candidate_spend_usd": candidate_spend / 1e6, "logged_spend_usd": logged_spend / 1e6,
        "savings_vs_logged": 1 - candidate_spend / logged_spend if logged_spend else None,
        "candidate_pass_rate": sum(bool(p["candidate_correct"]) for p in scored) / len(scored) if scored else None,
        "logged_pass_rate": sum(bool(p["logged_correct"]) for p in scored) / len(scored) if scored else None,
        "candidate_models": dict(sorted(models.items())),
        "unpriceable": {reason: ids for reason, ids in sorted(unpriceable.items())},
        "unscored": {reason: ids for reason, ids in sorted(unscored.items())},
        "per_request": priced,
    }


def render(report: dict[str, Any], show: int = 5) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    lines = [
        f"candidate {report['artifact']} ({report['router_version']}) on {report['requests']} logged requests: "
        f"{report['priced']} priced, {report['scored']} scored",
        f"spend on the priced requests: candidate ${report['candidate_spend_usd']:.6f} vs logged "
        f"${report['logged_spend_usd']:.6f} (savings {pct(report['savings_vs_logged'])}); all logged requests "
        f"${report['logged_spend_all_usd']:.6f}",
        f"pass rate on the scored requests: candidate {pct(report['candidate_pass_rate'])} vs logged "
        f"{pct(report['logged_pass_rate'])}",
        f"candidate's final models: {report['candidate_models']}",
    ]
    for title, key in (("not priced", "unpriceable"), ("priced, not scored", "unscored")):
        for reason, ids in report[key].items():
            more = f" (+{len(ids) - show} more)" if len(ids) > show else ""
            lines.append(f"{title}: {reason}: {len(ids)} requests: {', '.join(ids[:show])}{more}")
    return "\n".join(lines)


def run(requests: Sequence[LoggedRequest], registry: ModelRegistry, artifact: Path, costs: CostBook) -> dict[str, Any]:
    logs = group_by_prompt(requests)  # keyed by the registry's model names, as logged
    by_id = {(tenant, prompt): log for (tenant, prompt), log in logs.items()}
    names_to_ids = {spec.name: spec.provider_model_id for spec in registry.models}
    for log in by_id.values():  # the providers look answers up by model id
        log.answers = {names_to_ids.get(m, m): a for m, a in log.answers.items()}
    router = build_router(registry, artifact)
    providers = {spec.name: LoggedAnswerProvider(spec, by_id) for spec in registry.models}
    executor = LadderExecutor(registry, providers, escalation_for(registry, artifact), costs)
    started = time.perf_counter()
    report = asyncio.run(shadow_replay(requests, router, executor))
    report.update({"artifact": str(artifact), "router_version": router.version,
                   "seconds": round(time.perf_counter() - started, 2)})
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.replay_logs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, required=True, help="the candidate router's artifact folder")
    parser.add_argument("--since", type=datetime.fromisoformat, required=True)
    parser.add_argument("--until", type=datetime.fromisoformat)
    parser.add_argument("--tenant")
    parser.add_argument("--experiment")
    parser.add_argument("--source", action="append", help="feedback sources to trust (default: every source)")
    parser.add_argument("--dsn", help="Postgres DSN (default: ROUTER_PG_DSN / PG_DSN)")
    parser.add_argument("--models-config", type=Path, help="the live model registry (default: ROUTER_MODELS_CONFIG)")
    parser.add_argument("--json", type=Path, dest="json_out")
    args = parser.parse_args(argv)
    import psycopg  # noqa: PLC0415

    from core.settings import get_settings  # noqa: PLC0415
    from providers.costs import DbCostBook, RegistryCostBook  # noqa: PLC0415
    from training.logs import load_logged  # noqa: PLC0415

    settings = get_settings()
    dsn = args.dsn or settings.pg_dsn
    if not dsn:
        parser.error("no database: pass --dsn or set ROUTER_PG_DSN / PG_DSN")
    registry = ModelRegistry.from_yaml(args.models_config or settings.models_config)
    with psycopg.connect(dsn) as conn:
        requests = load_logged(conn, since=args.since, until=args.until, tenant=args.tenant,
                               experiment=args.experiment, sources=args.source)
    # Priced as the live pipeline prices (cost_rates at each request's time); list prices where it has none.
    costs = DbCostBook(dsn, refresh_s=settings.cost_rates_refresh_s, fallback=RegistryCostBook(registry))
    report = run(requests, registry, args.artifact, costs)
    print(render(report))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


def cli(argv: list[str] | None = None) -> int:
    from training.data import run_cli  # noqa: PLC0415

    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
