"""Online results of an experiment, per arm, from the logged requests and their feedback grades.

    python -m training.online_report [--experiment EXP] [--source user --source grader] [--confidence 0.95]
        [--margin 0.01] [--since 2026-01-01T00:00:00+00:00] [--json OUT.json]

Per arm: requests, cost per request (bootstrap CI), pass rate on graded requests (Wilson CI), p50/p95
latency. For every arm against the control arm: savings in cost per request (bootstrap CI), the pass-rate
difference (Newcombe's hybrid score interval) and whether the quality guard "pass rate >= control - margin"
holds at the chosen one-sided confidence: "holds" when the interval's lower end is above -margin,
"broken" when its upper end is below it, else "undecided", with the graded requests per arm still needed
to decide at the pass rates seen so far. A request's grade is its latest feedback (from the given sources).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

REPORT_SQL = """
SELECT r.request_id, r.arm, r.status, r.cost_micro_usd, r.latency_ms, r.router_version, g.correct
FROM requests r
LEFT JOIN LATERAL (
    SELECT e.correct FROM model_eval e
    WHERE e.request_id = r.request_id AND (%(sources)s::text[] IS NULL OR e.feedback_source = ANY(%(sources)s))
    ORDER BY e.evaluated_at DESC, e.feedback_source LIMIT 1) g ON true
WHERE r.experiment_id = %(experiment_id)s AND r.arm IS NOT NULL
  AND (%(since)s::timestamptz IS NULL OR r.created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR r.created_at < %(until)s)
ORDER BY r.request_id
"""


@dataclass(frozen=True)
class LoggedRequest:
    request_id: str
    arm: str
    status: str
    cost_micro_usd: int
    latency_ms: float
    router_version: str | None
    correct: bool | None  # None: not graded


def wilson(passed: int, n: int, z: float) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = passed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(passed_a: int, n_a: int, passed_b: int, n_b: int, z: float) -> tuple[float, float]:
    """Interval for p_a - p_b from the two Wilson intervals (Newcombe 1998, method 10)."""
    p_a, p_b = passed_a / n_a, passed_b / n_b
    lo_a, hi_a = wilson(passed_a, n_a, z)
    lo_b, hi_b = wilson(passed_b, n_b, z)
    diff = p_a - p_b
    return (diff - math.sqrt((p_a - lo_a) ** 2 + (hi_b - p_b) ** 2),
            diff + math.sqrt((hi_a - p_a) ** 2 + (p_b - lo_b) ** 2))


def graded_needed(passed_a: int, n_a: int, passed_b: int, n_b: int, z: float, margin: float) -> int | None:
    """Graded requests per arm for the guard's interval to clear -margin at the pass rates seen so far
    (normal approximation; rates smoothed by one pass and one fail); None when the arm's observed rate is
    margin or more below the control's (more grades would only confirm a broken guard)."""
    p_a, p_b = (passed_a + 1) / (n_a + 2), (passed_b + 1) / (n_b + 2)
    gap = p_a - p_b + margin
    if gap <= 0:
        return None
    return math.ceil(z * z * (p_a * (1 - p_a) + p_b * (1 - p_b)) / gap**2)


def bootstrap_mean_ci(values: np.ndarray, resamples: int, level: float, rng: np.random.Generator) -> tuple[float, float]:
    if len(values) == 0:
        return math.nan, math.nan
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    return float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2))


def build_report(rows: Sequence[LoggedRequest], arms: Sequence[dict[str, Any]], *, experiment_id: str,
                 control: str | None = None, confidence: float = 0.95, margin: float = 0.01,
                 resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The report from the logged rows and the experiment's arms (config order: name, kind, share)."""
    rng = np.random.default_rng(seed)
    z_one_sided = NormalDist().inv_cdf(confidence)
    z_two_sided = NormalDist().inv_cdf((1 + confidence) / 2)
    names = [arm["name"] for arm in arms] + sorted({r.arm for r in rows} - {arm["name"] for arm in arms})
    kinds = {arm["name"]: arm.get("kind") for arm in arms}
    if control is None:
        control = next((arm["name"] for arm in arms if arm.get("kind") == "control"), None)
    per_arm: dict[str, dict[str, Any]] = {}
    costs: dict[str, np.ndarray] = {}
    for name in names:
        mine = [r for r in rows if r.arm == name]
        cost = np.array([r.cost_micro_usd for r in mine], dtype=float) / 1e6
        latency = np.array([r.latency_ms for r in mine], dtype=float)
        graded = [r for r in mine if r.correct is not None]
        passed = sum(1 for r in graded if r.correct)
        costs[name] = cost
        per_arm[name] = {
            "kind": kinds.get(name), "requests": len(mine), "failed": sum(1 for r in mine if r.status != "ok"),
            "router_versions": sorted({r.router_version or "" for r in mine}),
            "cost_usd": float(cost.sum()), "cost_per_request_usd": float(cost.mean()) if len(mine) else None,
            "cost_per_request_ci": bootstrap_mean_ci(cost, resamples, confidence, rng) if len(mine) else None,
            "graded": len(graded), "passed": passed, "pass_rate": passed / len(graded) if graded else None,
            "pass_rate_ci": wilson(passed, len(graded), z_two_sided) if graded else None,
            "latency_p50_ms": float(np.percentile(latency, 50)) if len(mine) else None,
            "latency_p95_ms": float(np.percentile(latency, 95)) if len(mine) else None,
        }
    comparisons: dict[str, dict[str, Any]] = {}
    if control is not None and control in per_arm:
        base = per_arm[control]
        for name in names:
            if name == control:
                continue
            arm = per_arm[name]
            entry: dict[str, Any] = {"against": control}
            if arm["requests"] and base["requests"] and base["cost_per_request_usd"]:
                entry["savings"] = 1 - arm["cost_per_request_usd"] / base["cost_per_request_usd"]
                ratios = (costs[name][rng.integers(0, len(costs[name]), (resamples, len(costs[name])))].mean(axis=1)
                          / np.maximum(costs[control][rng.integers(0, len(costs[control]),
                                                                   (resamples, len(costs[control])))].mean(axis=1),
                                       1e-12))
                entry["savings_ci"] = (float(1 - np.quantile(ratios, (1 + confidence) / 2)),
                                       float(1 - np.quantile(ratios, (1 - confidence) / 2)))
            if arm["graded"] and base["graded"]:
                low, high = newcombe(arm["passed"], arm["graded"], base["passed"], base["graded"], z_one_sided)
                entry["pass_rate_diff"] = arm["pass_rate"] - base["pass_rate"]
                entry["pass_rate_diff_bounds"] = (low, high)
                entry["guard"] = "holds" if low >= -margin else "broken" if high < -margin else "undecided"
                needed = graded_needed(arm["passed"], arm["graded"], base["passed"], base["graded"], z_one_sided,
                                       margin)
                entry["graded_needed_per_arm"] = needed
                entry["graded_still_needed"] = (None if needed is None else
                                                {name: max(0, needed - arm["graded"]),
                                                 control: max(0, needed - base["graded"])})
            else:
                entry["guard"] = "undecided"
                entry["graded_needed_per_arm"] = None
                entry["graded_still_needed"] = None
            comparisons[name] = entry
    return {"experiment_id": experiment_id, "control": control, "confidence": confidence, "margin": margin,
            "requests": len(rows), "arms": per_arm, "comparisons": comparisons,
            "guard_rule": f"pass rate >= control - {100 * margin:g} pt, one-sided {100 * confidence:g}% "
                          "(Newcombe hybrid score interval)"}


def load_rows(conn: Any, experiment_id: str, sources: Sequence[str] | None = None, since: datetime | None = None,
              until: datetime | None = None) -> list[LoggedRequest]:
    cursor = conn.execute(REPORT_SQL, {"experiment_id": experiment_id, "sources": list(sources) if sources else None,
                                       "since": since, "until": until})
    return [LoggedRequest(*row) for row in cursor.fetchall()]


def latest_experiment_id(conn: Any) -> str | None:
    row = conn.execute("SELECT experiment_id FROM experiments ORDER BY (ended_at IS NULL) DESC, created_at DESC"
                       " LIMIT 1").fetchone()
    return row[0] if row else None


def report_from_db(conn: Any, experiment_id: str | None = None, sources: Sequence[str] | None = None,
                   **options: Any) -> dict[str, Any]:
    from sql.repository import get_experiment  # noqa: PLC0415

    experiment_id = experiment_id or latest_experiment_id(conn)
    if experiment_id is None:
        raise ValueError("no experiment recorded: create one with python -m training.experiments create")
    experiment = get_experiment(conn, experiment_id)
    if experiment is None:
        raise ValueError(f"no experiment {experiment_id!r}")
    rows = load_rows(conn, experiment_id, sources, options.pop("since", None), options.pop("until", None))
    return build_report(rows, experiment["arms"], experiment_id=experiment_id, **options)


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.6f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def render(report: dict[str, Any]) -> str:
    lines = [f"experiment {report['experiment_id']}: {report['requests']} requests; guard: {report['guard_rule']}",
             f"{'arm':<14}{'kind':<10}{'requests':>9}{'cost/req':>12}{'cost/req CI':>26}{'graded':>8}"
             f"{'pass':>8}{'pass CI':>18}{'p50 ms':>9}{'p95 ms':>9}"]
    for name, arm in report["arms"].items():
        ci = arm["cost_per_request_ci"]
        pci = arm["pass_rate_ci"]
        lines.append(
            f"{name:<14}{arm['kind'] or '-':<10}{arm['requests']:>9}{_money(arm['cost_per_request_usd']):>12}"
            f"{(f'[{_money(ci[0])}, {_money(ci[1])}]' if ci else '-'):>26}{arm['graded']:>8}"
            f"{_pct(arm['pass_rate']):>8}{(f'[{_pct(pci[0])}, {_pct(pci[1])}]' if pci else '-'):>18}"
            f"{arm['latency_p50_ms'] or 0:>9.0f}{arm['latency_p95_ms'] or 0:>9.0f}")
    for name, cmp in report["comparisons"].items():
        savings = (f"savings {_pct(cmp['savings'])} [{_pct(cmp['savings_ci'][0])}, {_pct(cmp['savings_ci'][1])}]"
                   if "savings" in cmp else "savings -")
        diff = (f"pass rate {100 * cmp['pass_rate_diff']:+.1f} pt, bounds [{100 * cmp['pass_rate_diff_bounds'][0]:+.1f},"
                f" {100 * cmp['pass_rate_diff_bounds'][1]:+.1f}] pt" if "pass_rate_diff" in cmp else "no grades yet")
        still = cmp["graded_still_needed"]
        need = ("not reachable at these pass rates" if cmp["graded_needed_per_arm"] is None and "pass_rate_diff" in cmp
                else "-" if still is None else ", ".join(f"{k} {v} more" for k, v in still.items()))
        lines.append(f"{name} vs {cmp['against']}: {savings}; {diff}; guard {cmp['guard'].upper()}; "
                     f"graded requests to decide: {need}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.online_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="Postgres DSN (default: ROUTER_PG_DSN / PG_DSN)")
    parser.add_argument("--experiment", help="experiment id (default: the latest running one)")
    parser.add_argument("--source", action="append", help="feedback sources to count (default: every source)")
    parser.add_argument("--control", help="the arm others are compared with (default: the first control arm)")
    parser.add_argument("--confidence", type=float, default=0.95, help="one-sided confidence of the guard")
    parser.add_argument("--margin", type=float, default=0.01, help="allowed pass-rate loss against control")
    parser.add_argument("--since", type=datetime.fromisoformat)
    parser.add_argument("--until", type=datetime.fromisoformat)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--json", type=Path, dest="json_out")
    args = parser.parse_args(argv)
    if not 0.5 < args.confidence < 1:
        parser.error("--confidence must be between 0.5 and 1")
    import psycopg  # noqa: PLC0415

    from core.settings import get_settings  # noqa: PLC0415

    dsn = args.dsn or get_settings().pg_dsn
    if not dsn:
        parser.error("no database: pass --dsn or set ROUTER_PG_DSN / PG_DSN")
    with psycopg.connect(dsn) as conn:
        report = report_from_db(conn, args.experiment, args.source, control=args.control,
                                confidence=args.confidence, margin=args.margin, resamples=args.bootstrap,
                                since=args.since, until=args.until)
    print(render(report))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def cli(argv: list[str] | None = None) -> int:
    try:
        return main(argv)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    sys.exit(cli())
