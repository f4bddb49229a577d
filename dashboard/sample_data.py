"""Synthetic router traffic, for trying the dashboard without the stack and for its benchmark and screenshots.

    python -m dashboard.sample_data --dsn postgresql://... --requests 100000 --days 30

Writes ``requests``, ``request_attempts`` and ``model_eval`` rows shaped like the sink's: difficulty-driven
routing over a cheap / mid / expensive ladder, escalations after rejected answers, fallbacks after errors,
per-model latency, integer micro-USD costs with an always-expensive counterfactual, and graded answers.
The figures are made up; never load them into a database whose numbers someone reports.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
import psycopg
from tqdm import tqdm

from core.settings import get_settings
from sql.repository import ATTEMPT_COLUMNS, EVAL_COLUMNS, REQUEST_COLUMNS


@dataclass(frozen=True)
class SampleModel:
    name: str
    tier: str
    input_micro_usd_per_1k: int
    output_micro_usd_per_1k: int
    latency_median_ms: float
    pass_rate: dict[str, float]

    def cost(self, tokens_in: int, tokens_out: int) -> int:
        return (tokens_in * self.input_micro_usd_per_1k + tokens_out * self.output_micro_usd_per_1k) // 1000


# Reference list prices (USD per 1M tokens ×1000 = micro-USD per 1k tokens).
LADDER = (
    SampleModel("phi-3-mini-4k-instruct", "cheap", 130, 520, 350.0, {"simple": 0.86, "medium": 0.55, "complex": 0.22}),
    SampleModel("llama-3.1-70b-instruct", "mid", 590, 790, 700.0, {"simple": 0.93, "medium": 0.80, "complex": 0.50}),
    SampleModel("gpt-4o-2024-05-13", "expensive", 2500, 10000, 1300.0, {"simple": 0.96, "medium": 0.88, "complex": 0.70}),
)
DIFFICULTIES = ("simple", "medium", "complex")
TENANTS = ("acme", "globex", "initech")
SOURCES = ("gsm8k", "mmlu-pro", "crux", "math-l5")
ESCALATE_P = 0.08
# The sample's answer checks and the reason kind each records.
REASON_KINDS = {"refusal": "refusal", "too_short": "short", "length": "length"}
ERROR_P = 0.02



def generate(
    conn: psycopg.Connection,
    requests: int,
    days: int,
    last_day: date | None = None,
    graded_share: float = 0.6,
    seed: int = 7,
    progress: bool = True,
) -> None:
    """Insert ``requests`` synthetic requests spread over ``days`` UTC days ending ``last_day`` (today by default)."""
    if requests < 1 or days < 1:
        raise ValueError("requests and days must be at least 1")
    rng = np.random.default_rng(seed)
    last_day = last_day or datetime.now(UTC).date()
    start = datetime.combine(last_day - timedelta(days=days - 1), time.min, tzinfo=UTC)
    offsets = np.sort(rng.uniform(0, days * 86_400, requests))
    expensive = LADDER[-1]
    # Its own stream, so the columns migration 0006 added leave the other figures as they were.
    baseline_rng = np.random.default_rng(seed + 1)
    with conn.cursor() as cur, \
            cur.copy(f"COPY requests ({', '.join(REQUEST_COLUMNS)}) FROM STDIN") as copy_requests:
        attempt_rows: list[tuple] = []
        eval_rows: list[tuple] = []
        for index in tqdm(range(requests), desc="requests", disable=not progress, unit="req"):
            request_id = f"sample-{seed}-{index:07d}"
            created = start + timedelta(seconds=float(offsets[index]))
            difficulty = DIFFICULTIES[rng.choice(3, p=(0.5, 0.3, 0.2))]
            tier = DIFFICULTIES.index(difficulty)
            # The policy sometimes bumps a request up a tier (premium customers, keywords).
            if tier < 2 and rng.random() < 0.1:
                tier += 1
            tokens_in = int(rng.lognormal(5.0, 0.7)) + 10
            attempts = []
            clock = created
            escalated = fell_back = False
            final = None
            position = tier
            while position < len(LADDER):
                model = LADDER[position]
                latency = float(rng.lognormal(np.log(model.latency_median_ms), 0.45))
                tokens_out = int(rng.lognormal(4.8 + 0.3 * DIFFICULTIES.index(difficulty), 0.6)) + 1
                roll = rng.random()
                if roll < ERROR_P:
                    attempt = dict(model=model, status="error", latency=latency * 3, tokens_out=0, cost=0,
                                   error="Error code: 503 - upstream overloaded")
                elif roll < ERROR_P + ESCALATE_P and position < len(LADDER) - 1:
                    attempt = dict(model=model, status="rejected", latency=latency, tokens_out=tokens_out,
                                   cost=model.cost(tokens_in, tokens_out),
                                   error=str(rng.choice(["refusal", "too_short", "length"])))
                else:
                    attempt = dict(model=model, status="ok", latency=latency, tokens_out=tokens_out,
                                   cost=model.cost(tokens_in, tokens_out), error=None)
                attempt["started"] = clock
                clock += timedelta(milliseconds=attempt["latency"])
                attempts.append(attempt)
                if attempt["status"] == "ok":
                    final = attempt
                    break
                if position == len(LADDER) - 1:
                    break
                next_model = LADDER[position + 1]
                if attempt["status"] == "error":
                    fell_back = True
                    attempt["next"] = (next_model.name, "error", f"fallback to {next_model.name}: {attempt['error']}")
                else:
                    escalated = True
                    attempt["next"] = (next_model.name, REASON_KINDS[attempt["error"]],
                                       f"escalate to {next_model.name}: {attempt['error']}")
                position += 1
            status = "ok" if final else "failed"
            total_cost = sum(a["cost"] for a in attempts)
            probabilities = rng.dirichlet(np.ones(3) + 4 * np.eye(3)[DIFFICULTIES.index(difficulty)])
            attempt_summaries = []
            for number, attempt in enumerate(attempts, start=1):
                attempt_rows.append((
                    request_id, number, attempt["model"].name, attempt["model"].tier, attempt["status"],
                    attempt["started"], attempt["latency"], tokens_in if attempt["status"] != "error" else 0,
                    attempt["tokens_out"], attempt["cost"], "stop" if attempt["status"] != "error" else None, 0,
                    attempt["error"], *attempt.get("next", (None, None, None)),
                ))
                attempt_summaries.append({"model": attempt["model"].name, "status": attempt["status"],
                                          "latency_ms": round(attempt["latency"], 1), "cost_micro_usd": attempt["cost"]})
            request_row = [
                request_id, created, clock, TENANTS[rng.choice(3, p=(0.6, 0.3, 0.1))], f"user-{rng.integers(500)}",
                "premium" if rng.random() < 0.1 else "standard",
                f"Sample prompt {index}: a {difficulty} question about topic {rng.integers(1000)}", 64, 512,
                difficulty, float(probabilities.max()),
                json.dumps(dict(zip(DIFFICULTIES, np.round(probabilities, 4).tolist(), strict=True))),
                f"predicted {difficulty}", "threshold", "sample", LADDER[tier].name,
                final["model"].name if final else None, status, json.dumps(attempt_summaries), len(attempts),
                escalated, fell_back, tokens_in if final else 0, final["tokens_out"] if final else 0,
                sum(a["latency"] for a in attempts), total_cost, expensive.name,
                expensive.cost(tokens_in, final["tokens_out"]) if final else None,
                f"Sample answer {index}." if final else None, "stop" if final else None,
                None if final else attempts[-1]["error"], "{}",
            ]
            correct = counterfactual_correct = None
            if final and rng.random() < graded_share:
                model = final["model"]
                correct = bool(rng.random() < model.pass_rate[difficulty])
                counterfactual_correct = bool(baseline_rng.random() < expensive.pass_rate[difficulty])
                eval_rows.append((request_id, clock, model.name, difficulty, SOURCES[index % len(SOURCES)],
                                  f"item-{index}", correct, total_cost))
            answered_cost = final["cost"] if final else 0
            # experiment_id, arm, router_version (0007), ttft_ms; correct, counterfactual_correct,
            # overhead_micro_usd, recorded (0006); key_id (0004)
            copy_requests.write_row((*request_row, None, None, "heuristic:threshold", None, correct,
                                     counterfactual_correct, total_cost - answered_cost, None, None))
    with conn.cursor() as cur:
        with cur.copy(f"COPY request_attempts ({', '.join(ATTEMPT_COLUMNS)}) FROM STDIN") as copy_attempts:
            for row in attempt_rows:
                copy_attempts.write_row(row)
        with cur.copy(f"COPY model_eval ({', '.join(EVAL_COLUMNS)}) FROM STDIN") as copy_evals:
            for row in eval_rows:
                copy_evals.write_row(row)
        cur.execute("ANALYZE requests; ANALYZE request_attempts; ANALYZE model_eval")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="Postgres DSN (default: ROUTER_PG_DSN / PG_DSN)")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--last-day", type=date.fromisoformat, default=None, help="last UTC day (default: today)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    dsn = args.dsn or get_settings().pg_dsn
    if not dsn:
        parser.error("no database: pass --dsn or set ROUTER_PG_DSN / PG_DSN")
    with psycopg.connect(dsn) as conn:
        generate(conn, args.requests, args.days, args.last_day, seed=args.seed)
    print(f"wrote {args.requests:,} sample requests over {args.days} days")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
