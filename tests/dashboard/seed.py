"""Five hand-made requests over two days whose figures the dashboard tests know by heart.

Day 1 (2026-01-05), day 2 (2026-01-06); costs in micro-USD:

| id | day | tenant | difficulty | chain                                   | final | cost | counterfactual |
|----|-----|--------|------------|-----------------------------------------|-------|------|----------------|
| r1 | 1   | acme   | simple     | phi ok                                  | phi   | 100  | 1000           |
| r2 | 1   | acme   | medium     | phi rejected (too_short) → llama ok     | llama | 300  | 2000           |
| r3 | 2   | globex | complex    | gpt ok                                  | gpt   | 3000 | 3000           |
| r4 | 2   | globex | simple     | phi error → llama ok                    | llama | 200  | 1000           |
| r5 | 2   | acme   | medium     | llama error → gpt error (failed)        | –     | 0    | NULL           |

Savings = 1 − 3600 / 7000 = 48.6 %; day 1: 1 − 400/3000 = 86.7 %; day 2: 1 − 3200/4000 = 20.0 %.
With grades (``with_evals``): r1..r4 graded, the router right on r1, r3, r4 and always-gpt right on all four:
accuracy −25.0 pt on 4 graded requests. Escalation overhead: r2's rejected phi answer, 50.
Billed per model, attempt by attempt: phi 150, llama 450, gpt 3000 (sum 3600 = spend).
Fallback spend: r4's llama call (200) and r5's gpt call (0), 2 calls: 200 / 3600 = 5.6 % of spend; day 2 6.25 %.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg

PHI, LLAMA, GPT = "phi-3-mini", "llama-3-70b", "gpt-4o"
DAY1 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
DAY2 = datetime(2026, 1, 6, 15, 0, tzinfo=UTC)

# (id, created, tenant, difficulty, routed, final, status, escalated, fell_back, cost, counterfactual, prompt, response)
REQUESTS = [
    ("r1", DAY1, "acme", "simple", PHI, PHI, "ok", False, False, 100, 1000, "What is two plus two?", "Four."),
    ("r2", DAY1 + timedelta(hours=1), "acme", "medium", PHI, LLAMA, "ok", True, False, 300, 2000,
     "Explain the aardvark migration puzzle", "The aardvark answer."),
    ("r3", DAY2, "globex", "complex", GPT, GPT, "ok", False, False, 3000, 3000, "Prove the theorem", "Proof."),
    ("r4", DAY2 + timedelta(hours=1), "globex", "simple", PHI, LLAMA, "ok", False, True, 200, 1000,
     "Capital of France?", "Paris."),
    ("r5", DAY2 + timedelta(hours=2), "acme", "medium", LLAMA, None, "failed", False, True, 0, None,
     "Summarise this contract", None),
]

# (request_id, attempt_no, model, tier, status, latency_ms, cost, error, next_model, next_reason_kind, next_reason)
ATTEMPTS = [
    ("r1", 1, PHI, "cheap", "ok", 100.0, 100, None, None, None, None),
    ("r2", 1, PHI, "cheap", "rejected", 200.0, 50, "too_short", LLAMA, "short", f"escalate to {LLAMA}: too_short"),
    ("r2", 2, LLAMA, "mid", "ok", 400.0, 250, None, None, None, None),
    ("r3", 1, GPT, "expensive", "ok", 1000.0, 3000, None, None, None, None),
    ("r4", 1, PHI, "cheap", "error", 50.0, 0, "Error code: 503", LLAMA, "error",
     f"fallback to {LLAMA}: Error code: 503"),
    ("r4", 2, LLAMA, "mid", "ok", 300.0, 200, None, None, None, None),
    ("r5", 1, LLAMA, "mid", "error", 60.0, 0, "timeout", GPT, "timeout", f"fallback to {GPT}: timeout"),
    ("r5", 2, GPT, "expensive", "error", 70.0, 0, "timeout", None, None, None),
]

# (request_id, counterfactual_correct): the expensive model's recorded grade on the same prompt
BASELINE_CORRECT = {"r1": True, "r2": True, "r3": True, "r4": True}
OVERHEAD = {"r2": 50}

# (request_id, model, difficulty, correct, cost)
EVALS = [
    ("r1", PHI, "simple", True, 100),
    ("r2", LLAMA, "medium", False, 300),
    ("r3", GPT, "complex", True, 3000),
    ("r4", LLAMA, "simple", True, 200),
]


def seed(dsn: str, with_evals: bool = True) -> None:
    by_id = {row[0]: row for row in REQUESTS}
    with psycopg.connect(dsn) as conn:
        for (rid, created, tenant, difficulty, routed, final, status, escalated, fell_back, cost, cf, prompt,
             response) in REQUESTS:
            chain = [a for a in ATTEMPTS if a[0] == rid]
            latency = sum(a[5] for a in chain)
            conn.execute(
                """
                INSERT INTO requests (request_id, created_at, completed_at, tenant, user_id, customer_tier, prompt,
                    prompt_chars, max_tokens, difficulty, confidence, probabilities, decision_reason, policy,
                    classifier, routed_model, final_model, status, attempts, attempt_count, escalated, fell_back,
                    tokens_in, tokens_out, latency_ms, cost_micro_usd, counterfactual_model,
                    counterfactual_cost_micro_usd, response, finish_reason, error)
                VALUES (%s, %s, %s, %s, 'u1', 'standard', %s, %s, 256, %s, 0.8, %s, %s, 'threshold', 'heuristic',
                    %s, %s, %s, '[]', %s, %s, %s, 20, 10, %s, %s, %s, %s, %s, %s, %s)
                """,
                (rid, created, created + timedelta(milliseconds=latency), tenant, prompt, len(prompt), difficulty,
                 json.dumps({"simple": 0.1, "medium": 0.1, difficulty: 0.8}), f"label {difficulty}", routed, final,
                 status, len(chain), escalated, fell_back, latency, cost, GPT if cf is not None else None, cf,
                 response, "stop" if response else None, None if response else "timeout"),
            )
        for rid, number, model, tier, status, latency, cost, error, next_model, next_kind, next_reason in ATTEMPTS:
            conn.execute(
                """
                INSERT INTO request_attempts (request_id, attempt_no, model, tier, status, started_at, latency_ms,
                    tokens_in, tokens_out, cost_micro_usd, error, next_model, next_reason_kind, next_reason)
                VALUES (%s, %s, %s, %s, %s, %s, %s, 20, 10, %s, %s, %s, %s, %s)
                """,
                (rid, number, model, tier, status, by_id[rid][1], latency, cost, error, next_model, next_kind,
                 next_reason),
            )
        if with_evals:
            for rid, model, difficulty, correct, cost in EVALS:
                conn.execute(
                    """
                    INSERT INTO model_eval (request_id, evaluated_at, model, difficulty, source, item_id, correct,
                        cost_micro_usd)
                    VALUES (%s, %s, %s, %s, 'gsm8k', %s, %s, %s)
                    """,
                    (rid, by_id[rid][1] + timedelta(minutes=1), model, difficulty, f"item-{rid}", correct, cost),
                )
                conn.execute("UPDATE requests SET correct = %s, counterfactual_correct = %s WHERE request_id = %s",
                             (correct, BASELINE_CORRECT[rid], rid))
        for rid, overhead in OVERHEAD.items():
            conn.execute("UPDATE requests SET overhead_micro_usd = %s WHERE request_id = %s", (overhead, rid))
