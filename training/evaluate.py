"""Offline cost/accuracy harness: the artifact's router replayed on recorded outcomes vs fixed baselines.

    python -m training.evaluate --data FILE_OR_DIR... --ladder CHEAP,MID,EXPENSIVE --prices FILE \\
        --artifact ARTIFACT_DIR --json OUT.json [--plot OUT.png]
    (without --artifact: the seed heuristic, as the live pipeline routes without one)

Savings, the accuracy delta against always-expensive and the escalation overhead follow the one definition
in ``core/savings.py``. When the data overlaps the artifact's training data the figures are in-sample:
the command says so loudly and reports the overlap (``training_overlap`` in the JSON).
    python -m training.evaluate --data FILE_OR_DIR... --pool M1,M2,... --reference REF --prices FILE \\
        --artifact ARTIFACT_DIR --json OUT.json

It runs the live routing code, not a model of it: ``Router.route`` (classifier + calibrated policy)
and ``providers.executor.LadderExecutor`` with its answer checks and escalation, each model a
``ReplayProvider`` answering with the recorded response and token counts, every call charged by a
cost book built from the prices file. The policy is used as the artifact holds it: nothing is tuned
here, and the artifact's digest before and after is written to the JSON to prove it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from core.messages import LABELS, TIER_ORDER, CompletionMessage, PromptMessage, RoutedMessage
from core.savings import SavingsTotals, router_label
from providers.costs import RegistryCostBook
from providers.executor import LadderExecutor
from providers.replay import OUTCOME_ID_KEY, OutcomeIndex, ReplayProvider
from routing.artifact import artifact_digest, read_json
from routing.escalation import Escalation
from routing.factory import build_router, escalation_for
from routing.verifier import load_verifier
from training.data import Ladder, LadderData, load_ladder_data, load_prices, replay_registry, run_cli
from training.reader import served_reader_logits
from training.simulate import CostFn, simulate_setting
from training.verifier_fit import answer_matrices, score_verifier

# Replayed requests are priced at one fixed instant so reruns give identical costs.
PRICED_AT = datetime(2024, 6, 1, tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True, help="outcomes files or folders")
    p.add_argument("--ladder", required=True, help="CHEAP,MID,EXPENSIVE model ids as in the outcomes")
    p.add_argument("--prices", type=Path, required=True)
    p.add_argument("--artifact", type=Path, help="trained artifact (default: route with the seed heuristic)")
    p.add_argument("--json", type=Path, required=True, dest="json_out")
    p.add_argument("--plot", type=Path)
    p.add_argument("--bootstrap", type=int, default=2000, help="paired bootstrap resamples")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per Router.route call")
    p.add_argument("--concurrency", type=int, default=64, help="replayed requests in flight")
    p.add_argument("--seed", type=int, default=0)
    return p


def request_id(record_id: str) -> str:
    return hashlib.sha256(record_id.encode()).hexdigest()[:32]


async def replay(data: LadderData, router: Any, escalation: Escalation, registry: Any, batch_size: int,
                 concurrency: int) -> list[CompletionMessage]:
    index = OutcomeIndex(data.records)
    providers = {spec.name: ReplayProvider(spec, index) for spec in registry.models}
    executor = LadderExecutor(registry, providers, escalation, RegistryCostBook(registry))
    # Each request names its record: prompt texts repeat across records with different recorded answers.
    prompts = [PromptMessage(request_id=request_id(r.id), prompt=r.prompt, created_at=PRICED_AT,
                             metadata={OUTCOME_ID_KEY: r.id}) for r in data.records]
    completions: list[CompletionMessage | None] = [None] * len(prompts)
    gate = asyncio.Semaphore(concurrency)

    async def run_one(i: int, routed: RoutedMessage) -> None:
        async with gate:
            completions[i] = await executor.run(routed)

    with tqdm(total=len(prompts), desc="route + replay", unit="prompt") as bar:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            decisions = router.route(batch)
            tasks = [run_one(start + j, RoutedMessage(prompt=p, decision=d, target_model=d.model))
                     for j, (p, d) in enumerate(zip(batch, decisions, strict=True))]
            await asyncio.gather(*tasks)
            bar.update(len(batch))
    return [c for c in completions if c is not None]


def paired_bootstrap(router_correct: np.ndarray, expensive_correct: np.ndarray, resamples: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    diff = router_correct.astype(float) - expensive_correct.astype(float)
    n = len(diff)
    stats = np.array([diff[rng.integers(0, n, n)].mean() for _ in range(resamples)])
    return {"estimate": float(diff.mean()), "low": float(np.quantile(stats, 0.025)),
            "high": float(np.quantile(stats, 0.975)), "resamples": resamples, "confidence": 0.95}


def summarise(data: LadderData, completions: list[CompletionMessage], costs: np.ndarray, rows: np.ndarray) -> dict:
    ladder = data.ladder.models
    router_correct = np.array([bool(completions[i].correct) for i in rows])
    router_cost = sum(completions[i].cost_micro_usd for i in rows) / 1e6
    expensive_cost = float(costs[rows, 2].sum())
    savings = SavingsTotals.from_completions(completions[i] for i in rows)
    finals = Counter(completions[i].final_model for i in rows)
    called = Counter(a.model for i in rows for a in completions[i].attempts)
    # Oracle: the cheapest model that is right; where none is, the cheapest model.
    oracle_correct = data.correct[rows].any(axis=1)
    oracle_cost = 0.0
    for i in rows:
        right = [k for k in range(3) if data.correct[i, k]]
        oracle_cost += float(min(costs[i, k] for k in right) if right else costs[i].min())
    return {
        "n": int(len(rows)),
        "baselines": {m: {"accuracy": float(data.correct[rows, k].mean()), "cost_usd": float(costs[rows, k].sum())}
                      for k, m in enumerate(ladder)},
        "oracle": {"accuracy": float(oracle_correct.mean()), "cost_usd": oracle_cost,
                   "savings_vs_expensive": 1 - oracle_cost / expensive_cost if expensive_cost else 0.0},
        "router": {
            "accuracy": float(router_correct.mean()), "cost_usd": router_cost,
            # core/savings.py: the same figure the console and the dashboard show for these requests.
            "savings_vs_expensive": savings.savings_ratio if savings.savings_ratio is not None else 0.0,
            "savings": {**asdict(savings), "savings_ratio": savings.savings_ratio,
                        "accuracy_delta": savings.accuracy_delta},
            "mix": {m: finals.get(m, 0) / len(rows) for m in ladder},
            "calls_per_request": {m: called.get(m, 0) / len(rows) for m in ladder},
            "failed": sum(1 for i in rows if completions[i].status != "ok"),
        },
    }


def macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    scores = []
    for k in range(len(LABELS)):
        tp = int(((predicted == k) & (truth == k)).sum())
        fp = int(((predicted == k) & (truth != k)).sum())
        fn = int(((predicted != k) & (truth == k)).sum())
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def book_cost_fn(book: RegistryCostBook, ladder: Sequence[str]) -> CostFn:
    """Per-call cost exactly as the executor charges it (integer micro-USD at the list rate)."""
    rates = [book.rate(model, PRICED_AT) for model in ladder]

    def cost(k: int, input_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
        return rates[k].cost_micro_usd_many(input_tokens, output_tokens) / 1e6

    return cost


class SettingSimulator:
    """The simulator of the ladder rule on this data, for any setting of the artifact's policy; its
    answer features and verifier scores are computed once for the chosen point and the whole sweep."""

    def __init__(self, data: LadderData, artifact: Path, policy_doc: dict, registry: Any,
                 probabilities: np.ndarray, cost_fn: CostFn, topics: Sequence[str | None] | None) -> None:
        self.data, self.registry, self.probabilities = data, registry, probabilities
        self.cost_fn, self.topics = cost_fn, topics
        model = load_verifier(artifact, policy_doc["verifier"]) if "verifier" in policy_doc.get("checks", []) else None
        reader_logits = served_reader_logits(model.reader, data) if model is not None else None
        self.matrices = answer_matrices(data, probabilities, reader_logits)
        self.scores = score_verifier(model, self.matrices, registry) if model is not None else None

    def run(self, setting: dict[str, Any]) -> dict[str, float]:
        out = simulate_setting(self.data, self.matrices, self.cost_fn, self.registry, self.probabilities,
                               self.scores, setting, self.topics)
        return {"accuracy": out.accuracy, "cost_usd": out.cost_usd}


def sweep_curve(simulator: SettingSimulator, policy_doc: dict) -> list[dict[str, Any]]:
    """Cost and accuracy of every setting on the artifact's calibration frontier, on this data
    (the chosen point is cross-checked against the real replay)."""
    points = []
    for cand in tqdm(policy_doc.get("sweep", []), desc="threshold sweep", unit="setting"):
        result = simulator.run(cand)
        points.append({**cand, "eval_accuracy": result["accuracy"], "eval_cost_usd": result["cost_usd"]})
    return points


def chosen_setting(policy_doc: dict) -> dict[str, Any]:
    verifier = policy_doc.get("verifier", {})
    return {"policy": policy_doc["policy"], "policy_params": policy_doc["params"],
            "margins": verifier.get("margins", {"cheap": None, "mid": None}),
            "margins_by_kind": verifier.get("margins_by_kind", {}),
            "max_escalations": policy_doc["max_escalations"]}


def plot(report: dict[str, Any], curve: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib  # noqa: PLC0415 - training extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = sorted((p["eval_cost_usd"], p["eval_accuracy"]) for p in curve)
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=3, color="tab:blue", alpha=0.7,
                label="router: calibration frontier (threshold sweep)")
    for name, values in report["baselines"].items():
        ax.scatter(values["cost_usd"], values["accuracy"], marker="s", s=60, label=f"always {name}")
    ax.scatter(report["oracle"]["cost_usd"], report["oracle"]["accuracy"], marker="*", s=120, color="gold",
               edgecolor="k", label="oracle")
    r = report["router"]
    ax.scatter(r["cost_usd"], r["accuracy"], marker="D", s=90, color="red", edgecolor="k", zorder=5,
               label=f"router (chosen): {100 * r['savings_vs_expensive']:.0f}% saved")
    expensive = list(report["baselines"].values())[-1]
    ax.axhline(expensive["accuracy"] - 0.01, ls="--", color="grey", lw=1, label="expensive - 1 pt")
    ax.set_xlabel("cost (USD, list prices)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    if "--pool" in (sys.argv[1:] if argv is None else argv):  # a pool artifact: training.pool_evaluate
        from training.pool_evaluate import main as evaluate_pool  # noqa: PLC0415

        return evaluate_pool(argv)
    args = build_parser().parse_args(argv)
    ladder = Ladder.parse(args.ladder)
    prices = load_prices(args.prices)
    registry = replay_registry(ladder, prices)
    card: dict[str, Any] = {}
    if args.artifact is not None:
        card = read_json(args.artifact / "model_card.json")
        trained = card.get("ladder", {})
        if [trained.get("cheap"), trained.get("mid"), trained.get("expensive")] != ladder.models:
            raise SystemExit(f"the artifact was trained for ladder {trained}, not {ladder.models}")
        digest_before = artifact_digest(args.artifact)
        policy_doc = read_json(args.artifact / "policy.json")
    data = load_ladder_data(args.data, ladder, prices)
    overlap = training_overlap(args.artifact, card, data) if args.artifact is not None else None
    if overlap is not None and overlap["records"]:
        warn_in_sample(overlap)
    router = build_router(registry, args.artifact)
    escalation = escalation_for(registry, args.artifact)
    completions = asyncio.run(replay(data, router, escalation, registry, args.batch_size, args.concurrency))
    cost_fn = book_cost_fn(RegistryCostBook(registry), ladder.models)
    tokens = np.array([[(r.outcomes[m].input_tokens, r.outcomes[m].output_tokens) for m in ladder.models]
                       for r in data.records])  # (n, 3, input/output)
    costs = np.stack([cost_fn(k, tokens[:, k, 0], tokens[:, k, 1]) for k in range(3)], axis=1)
    report: dict[str, Any] = {"ladder": ladder.models, **summarise(data, completions, costs, np.arange(data.n))}
    report["router"]["name"] = router_label(router.classifier.name, router.version)
    report["training_overlap"] = overlap
    router_correct = np.array([bool(c.correct) for c in completions])
    report["router"]["accuracy_minus_expensive_ci95"] = paired_bootstrap(
        router_correct, data.correct[:, 2], args.bootstrap, args.seed)
    report["per_source"] = {
        source: summarise(data, completions, costs, np.array([i for i, s in enumerate(data.sources) if s == source]))
        for source in sorted(set(data.sources))
    }
    probabilities = np.array([[c.decision.probabilities.get(label, 0.0) for label in LABELS] for c in completions])
    truth = data.label_ids()
    predicted = probabilities.argmax(axis=1)
    report["classifier"] = {"accuracy": float((predicted == truth).mean()), "macro_f1": macro_f1(truth, predicted),
                            "label_share": {lab: float((truth == k).mean()) for k, lab in enumerate(LABELS)},
                            "unsolvable_share": float(data.unsolvable.mean())}
    topics = [c.decision.topic for c in completions]  # the served topic model's, as routed
    categories = [r.category for r in data.records]
    if any(topics) and all(categories):
        report["topic"] = {"accuracy": float(np.mean([t == c for t, c in zip(topics, categories, strict=True)]))}
    report["start_tier_share"] = {t.value: float(np.mean([c.decision.tier == t for c in completions]))
                                  for t in TIER_ORDER}
    report["escalation_reasons"] = dict(Counter(
        (a.error or "").split(":")[0] for c in completions for a in c.attempts if a.status == "rejected"))
    curve: list[dict[str, Any]] = []
    if args.artifact is not None:  # the seed heuristic has no calibration frontier to sweep
        simulator = SettingSimulator(data, args.artifact, policy_doc, registry, probabilities, cost_fn, topics)
        simulated = simulator.run(chosen_setting(policy_doc))
        report["simulator_check"] = {**simulated, "matches_replay":
                                     abs(simulated["accuracy"] - report["router"]["accuracy"]) < 1e-9
                                     and abs(simulated["cost_usd"] - report["router"]["cost_usd"]) < 1e-6}
        curve = sweep_curve(simulator, policy_doc)
        # The curve only: each point's settings are in the artifact's policy.json sweep, in this order.
        report["sweep"] = [{"train_accuracy": p.get("accuracy"), "train_cost_usd": p.get("cost_usd"),
                            "eval_accuracy": p["eval_accuracy"], "eval_cost_usd": p["eval_cost_usd"]} for p in curve]
        report["policy"] = {k: policy_doc[k] for k in ("policy", "params", "max_escalations", "checks")}
        report["policy"]["verifier_margins"] = policy_doc.get("verifier", {}).get("margins")
        report["policy"]["verifier_margins_by_kind"] = policy_doc.get("verifier", {}).get("margins_by_kind")
    report["prompt_kind_share"] = {kind: count / data.n for kind, count in sorted(Counter(
        c.decision.prompt_kind for c in completions if c.decision.prompt_kind).items())}
    report["cut_off_answers"] = {m: sum(1 for c in completions for a in c.attempts
                                        if a.model == m and a.finish_reason == "length") / data.n
                                 for m in ladder.models}
    if args.artifact is not None:
        report["artifact"] = {"path": str(args.artifact), "version": router.version, "sha256_before": digest_before,
                              "sha256_after": artifact_digest(args.artifact),
                              "training_fingerprint": card.get("data", {}).get("fingerprint")}
    report["data_fingerprint"] = data.fingerprint()
    report["skipped_incomplete"] = data.skipped_incomplete
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json_out.with_name(args.json_out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.json_out)
    if args.plot:
        plot(report, curve, args.plot, f"{' -> '.join(ladder.models)}  (n={data.n})")
    r, e = report["router"], report["baselines"][ladder.expensive]
    ci = r["accuracy_minus_expensive_ci95"]
    print(f"n={data.n}  router accuracy {r['accuracy']:.4f} vs expensive {e['accuracy']:.4f} "
          f"(diff {ci['estimate']:+.4f}, 95% CI [{ci['low']:+.4f}, {ci['high']:+.4f}]); "
          f"cost ${r['cost_usd']:.4f} vs ${e['cost_usd']:.4f}: savings {100 * r['savings_vs_expensive']:.1f}%; "
          f"oracle savings {100 * report['oracle']['savings_vs_expensive']:.1f}%")
    totals = SavingsTotals(**{k: v for k, v in r["savings"].items() if k in SavingsTotals.__dataclass_fields__})
    print(totals.line(r["name"], ladder.expensive))
    if overlap is not None and overlap["records"]:
        warn_in_sample(overlap)  # again after the figures, so nobody reads them without it
    return 0


def training_overlap(artifact: Path, card: dict[str, Any], data: LadderData) -> dict[str, Any]:
    """How many of these records the artifact was trained on: by the record ids it saved
    (``training_oof.npz``), else by the model card's data fingerprint (equal: all of them)."""
    ids = {r.id for r in data.records}
    oof = artifact / "training_oof.npz"
    if oof.is_file():
        trained_ids = {str(i) for i in np.load(oof)["ids"]}
        records, basis = len(ids & trained_ids), "record ids in training_oof.npz"
    else:
        same = card.get("data", {}).get("fingerprint") == data.fingerprint()
        records, basis = (data.n if same else 0), "model card data fingerprint (no training_oof.npz: partial " \
                                                  "overlap cannot be seen)"
    return {"records": records, "of": data.n, "share": records / data.n if data.n else 0.0, "basis": basis,
            "training_fingerprint": card.get("data", {}).get("fingerprint"), "data_fingerprint": data.fingerprint()}


def warn_in_sample(overlap: dict[str, Any]) -> None:
    bar = "!" * 100
    print(f"{bar}\nWARNING: IN-SAMPLE FIGURES. {overlap['records']:,} of these {overlap['of']:,} records "
          f"({100 * overlap['share']:.1f}%) are in the artifact's training data ({overlap['basis']}).\n"
          "The router was fitted and calibrated on them, so accuracy and savings here overstate what it does on "
          "new prompts. Evaluate on a held-out split (docs/classifier.md) for honest figures.\n" + bar,
          file=sys.stderr, flush=True)


def cli(argv: list[str] | None = None) -> int:
    """``main`` with bad input reported in one line."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
