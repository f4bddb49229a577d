"""Serving cost of a pool artifact on 2 cores: the routing decision per prompt and the answer check
per answer (the pool answer model with its features), p50 / p95 in milliseconds.

    python -m benchmarks.pool_speed --artifact DIR --data FILES --pool M1,... --reference REF \\
        --prices P [--prompts 300] [--json OUT.json]

The routing decision is ``Router.route`` on one prompt (prompt kind, topic model, plan); the answer
check is ``PoolAnswerCheck.reject_reason`` on one recorded answer of the plan's first model, as the
executor calls it after each answer; the answer model is its features and p(right) on every pool
model's recorded answer.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from core.messages import PromptMessage
from core.outcomes import load_outcomes
from routing.answer_checks import Answer
from routing.factory import build_router, escalation_for
from routing.pool_policy import PoolAnswerCheck, pool_answer_features
from training.data import load_prices
from training.pool import parse_pool, pool_registry


def percentiles(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(samples, 50)), "p95_ms": float(np.percentile(samples, 95)),
            "n": len(samples)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pool_speed", description=__doc__.splitlines()[0])
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--pool", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--prices", type=Path, required=True)
    p.add_argument("--prompts", type=int, default=300)
    p.add_argument("--json", type=Path, dest="json_out")
    args = p.parse_args(argv)
    models = parse_pool(args.pool, args.reference)
    registry = pool_registry(models, args.reference, load_prices(args.prices))
    router = build_router(registry, args.artifact)
    check = next(c for c in escalation_for(registry, args.artifact).checks if isinstance(c, PoolAnswerCheck))
    records = [r for r in load_outcomes(args.data) if all(m in r.outcomes for m in models)][: args.prompts]
    route_ms, check_ms, model_ms = [], [], []
    for record in records:
        prompt = PromptMessage(request_id="bench", prompt=record.prompt)
        started = time.perf_counter()
        decision = router.route([prompt])[0]
        route_ms.append(1000 * (time.perf_counter() - started))
        out = record.outcomes[decision.model]
        answer = Answer(decision.model, out.response, "stop", out.output_tokens, input_tokens=out.input_tokens,
                        kind=decision.prompt_kind)
        started = time.perf_counter()
        check.reject_reason(prompt, answer)
        check_ms.append(1000 * (time.perf_counter() - started))
        # The answer model alone, on every pool model's answer (whatever the plan says): features + p(right).
        for model in models:
            out = record.outcomes[model]
            started = time.perf_counter()
            x = pool_answer_features(record.prompt, out.response, out.input_tokens, out.output_tokens)
            check.model.probability(model, x)
            model_ms.append(1000 * (time.perf_counter() - started))
    report = {"artifact": str(args.artifact), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
              "routing_decision": percentiles(route_ms), "answer_check": percentiles(check_ms),
              "answer_model_per_answer": percentiles(model_ms)}
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
