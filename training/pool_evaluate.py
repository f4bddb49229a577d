"""The offline harness for a pool artifact: the live router and executor replayed on recorded outcomes.

    python -m training.evaluate --data FILES --pool M1,M2,... --reference REF --prices P \\
        --artifact DIR --json OUT.json

Same contract as the ladder's: ``router.accuracy``, ``router.savings_vs_expensive`` (against always
calling the reference), ``baselines[M]`` for every pool model and the reference, the oracle (the
cheapest right pool model), the paired difference to the reference with its 95 % interval and
whether the guard holds, and a check that the training simulator gives exactly the replay's cost and
accuracy. Nothing is tuned here; the artifact's digest before and after is written to the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from providers.costs import RegistryCostBook
from routing.artifact import artifact_digest, read_json
from routing.factory import build_router, escalation_for
from routing.pool_policy import AnswerModel, PoolPolicy
from training.data import load_prices
from training.evaluate import PRICED_AT, book_cost_fn, replay
from training.guard import evaluation_report
from training.pool import answer_probabilities, load_pool_data, override_mask, parse_pool, pool_registry, simulate_plan


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description="Evaluate a pool artifact.")
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--pool", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--prices", type=Path, required=True)
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--json", type=Path, required=True, dest="json_out")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prices = load_prices(args.prices)
    models = parse_pool(args.pool, args.reference)
    card = read_json(args.artifact / "model_card.json")
    if sorted(card.get("pool", [])) != sorted(models) or card.get("reference") != args.reference:
        raise SystemExit(f"the artifact was trained for pool {card.get('pool')} with reference "
                         f"{card.get('reference')}, not {models} with {args.reference}")
    registry = pool_registry(models, args.reference, prices)
    digest_before = artifact_digest(args.artifact)
    policy_doc = read_json(args.artifact / "policy.json")
    data = load_pool_data(args.data, models, args.reference, prices)
    router = build_router(registry, args.artifact)
    escalation = escalation_for(registry, args.artifact)
    completions = asyncio.run(replay(data, router, escalation, registry, args.batch_size, args.concurrency))
    # Costs exactly as the executor charges them (integer micro-USD at the list rate).
    cost_fn = book_cost_fn(RegistryCostBook(registry), models)
    tokens = np.array([[(r.outcomes[m].input_tokens, r.outcomes[m].output_tokens) for m in models]
                       for r in data.records])
    costs = np.stack([cost_fn(k, tokens[:, k, 0], tokens[:, k, 1]) for k in range(len(models))], axis=1)
    data.cost_usd = costs

    def summarise(rows: np.ndarray) -> dict[str, Any]:
        right = np.array([bool(completions[i].correct) for i in rows])
        spend = sum(completions[i].cost_micro_usd for i in rows) / 1e6
        ref_cost = float(costs[rows, data.ref].sum())
        oracle_cost = float(sum(costs[i][data.correct[i]].min() if data.correct[i].any() else costs[i].min()
                                for i in rows))
        finals = Counter(completions[i].final_model for i in rows)
        called = Counter(a.model for i in rows for a in completions[i].attempts)
        return {
            "n": int(len(rows)),
            "baselines": {m: {"accuracy": float(data.correct[rows, k].mean()), "cost_usd": float(costs[rows, k].sum()),
                              "savings_vs_expensive": 1 - float(costs[rows, k].sum()) / ref_cost if ref_cost else 0.0}
                          for k, m in enumerate(models)},
            "oracle": {"accuracy": float(data.correct[rows].any(axis=1).mean()), "cost_usd": oracle_cost,
                       "savings_vs_expensive": 1 - oracle_cost / ref_cost if ref_cost else 0.0},
            "router": {"accuracy": float(right.mean()), "cost_usd": spend,
                       "savings_vs_expensive": 1 - spend / ref_cost if ref_cost else 0.0,
                       "mix": {m: finals.get(m, 0) / len(rows) for m in models},
                       "calls_per_request": {m: called.get(m, 0) / len(rows) for m in models},
                       "failed": sum(1 for i in rows if completions[i].status != "ok")},
        }

    all_rows = np.arange(data.n)
    report: dict[str, Any] = {"pool": models, "reference": args.reference, **summarise(all_rows)}
    router_correct = np.array([bool(c.correct) for c in completions])
    guard_doc = policy_doc.get("guard", {})
    guard = float(guard_doc.get("guard", 0.01))
    report["router"]["accuracy_minus_expensive_ci95"] = evaluation_report(
        router_correct, data.correct[:, data.ref], guard, args.bootstrap, args.seed)
    report["guard"] = {"promise": guard_doc, "holds_on_this_sample": report["router"][
        "accuracy_minus_expensive_ci95"]["holds"], "sample_size": data.n}
    report["per_source"] = {s: summarise(np.array([i for i, x in enumerate(data.sources) if x == s]))
                            for s in sorted(set(data.sources))}
    report["plans_used"] = dict(Counter(c.decision.reasons[0].split(": plan ")[-1] for c in completions).most_common())
    report["prompt_kind_share"] = {k: v / data.n for k, v in sorted(Counter(
        c.decision.prompt_kind for c in completions).items())}
    # The training simulator, on the served answer model's scores and the kinds as routed, must give
    # exactly what the real executor replay gave.
    policy = PoolPolicy(**policy_doc["params"])
    served = answer_probabilities(AnswerModel.load(args.artifact / policy_doc.get("answer_model", AnswerModel.FILE)),
                                  data)
    override = override_mask(data)
    sim_right = np.zeros(data.n, dtype=bool)
    sim_cost = np.zeros(data.n)
    for i, completion in enumerate(completions):
        plan = policy.plan_for(completion.decision.prompt_kind or "")
        _, right, cost = simulate_plan(data, served, np.array([i]), plan, override)
        sim_right[i], sim_cost[i] = right[0], cost[0]
    sim_spend = float(sum(round(c * 1e6) for c in sim_cost)) / 1e6
    report["simulator_check"] = {
        "accuracy": float(sim_right.mean()), "cost_usd": sim_spend,
        "matches_replay": bool(abs(sim_right.mean() - report["router"]["accuracy"]) < 1e-9
                               and abs(sim_spend - report["router"]["cost_usd"]) < 1e-6)}
    report["artifact"] = {"path": str(args.artifact), "sha256_before": digest_before,
                          "sha256_after": artifact_digest(args.artifact),
                          "training_fingerprint": card.get("data", {}).get("fingerprint")}
    report["data_fingerprint"] = data.fingerprint()
    report["skipped_incomplete"] = data.skipped_incomplete
    report["priced_at"] = PRICED_AT.isoformat()
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json_out.with_name(args.json_out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.json_out)
    r, e = report["router"], report["baselines"][args.reference]
    ci = r["accuracy_minus_expensive_ci95"]
    print(f"n={data.n}  router accuracy {r['accuracy']:.4f} vs {args.reference} {e['accuracy']:.4f} "
          f"(diff {ci['estimate']:+.4f}, 95% CI [{ci['low']:+.4f}, {ci['high']:+.4f}]; guard "
          f"{'holds' if ci['holds'] else 'BROKEN'}); cost ${r['cost_usd']:.4f} vs ${e['cost_usd']:.4f}: "
          f"savings {100 * r['savings_vs_expensive']:.1f}%; oracle savings {100 * report['oracle']['savings_vs_expensive']:.1f}%")
    return 0
