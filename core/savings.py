"""The one definition of savings, used by the demo console, every dashboard view and ``training.evaluate``.

For a set of requests:

- **spend**: what every model billed, attempt by attempt (a cheap answer that was rejected and escalated is
  billed to the cheap model, and counts);
- **always-expensive spend** (the baseline): what the counterfactual model (the registry's expensive model)
  bills for the same prompts. When its answer to the prompt is recorded (replay, the offline harness) that is
  its real billed tokens; otherwise the prompt and the returned answer counted with its tokenizer;
- **savings** = 1 − spend / always-expensive spend, both summed over the *comparable* requests: those with
  a baseline (a request that failed on every model has none);
- **accuracy delta** = router accuracy − always-expensive accuracy, over the *graded* requests: those where
  both the returned answer's and the expensive model's correctness are known (replayed prompts with a
  recorded answer; live traffic and unrecorded prompts are ungraded and left out);
- **escalation overhead**: what the attempts whose answers were not returned cost (rejected answers before
  an escalation, billed failures), part of spend, shown as its own figure.

Every figure is summed in integer micro-USD, so the places that show it agree to the cent on the same rows.
The sums come from Postgres (``sql.repository.SAVINGS_TOTALS_COLUMNS``) or from completions
(:meth:`SavingsTotals.from_completions`); the ratios below are the only place they are computed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol


class _CompletionLike(Protocol):  # core.messages.CompletionMessage, without importing it here
    cost_micro_usd: int
    counterfactual_cost_micro_usd: int | None
    correct: bool | None
    counterfactual_correct: bool | None
    overhead_micro_usd: int


@dataclass(frozen=True)
class SavingsTotals:
    requests: int = 0
    spend_micro_usd: int = 0
    comparable_requests: int = 0
    comparable_spend_micro_usd: int = 0
    baseline_micro_usd: int = 0
    graded: int = 0
    correct: int = 0
    baseline_correct: int = 0
    overhead_micro_usd: int = 0

    # ------------------------------------------------------------------ the definition

    @property
    def savings_ratio(self) -> float | None:
        if not self.baseline_micro_usd:
            return None
        return 1 - self.comparable_spend_micro_usd / self.baseline_micro_usd

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.graded if self.graded else None

    @property
    def baseline_accuracy(self) -> float | None:
        return self.baseline_correct / self.graded if self.graded else None

    @property
    def accuracy_delta(self) -> float | None:
        """Router accuracy minus always-expensive accuracy, on the same graded requests (a fraction)."""
        return (self.correct - self.baseline_correct) / self.graded if self.graded else None

    @property
    def saved_micro_usd(self) -> int:
        return self.baseline_micro_usd - self.comparable_spend_micro_usd

    # ------------------------------------------------------------------ building

    @classmethod
    def from_completions(cls, completions: Iterable[_CompletionLike]) -> SavingsTotals:
        sums = dict.fromkeys((f.name for f in fields(cls)), 0)
        for c in completions:
            sums["requests"] += 1
            sums["spend_micro_usd"] += c.cost_micro_usd
            sums["overhead_micro_usd"] += c.overhead_micro_usd
            if c.counterfactual_cost_micro_usd is not None:
                sums["comparable_requests"] += 1
                sums["comparable_spend_micro_usd"] += c.cost_micro_usd
                sums["baseline_micro_usd"] += c.counterfactual_cost_micro_usd
            if c.correct is not None and c.counterfactual_correct is not None:
                sums["graded"] += 1
                sums["correct"] += bool(c.correct)
                sums["baseline_correct"] += bool(c.counterfactual_correct)
        return cls(**sums)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], prefix: str = "") -> SavingsTotals:
        """From a row of ``sql.repository.savings_totals_columns(prefix)`` (NULL sums of no rows count as 0)."""
        return cls(**{f.name: int(row[prefix + f.name] or 0) for f in fields(cls)})

    # ------------------------------------------------------------------ showing

    def line(self, router: str, baseline_model: str) -> str:
        """The savings sentence every screen prints: router, savings, accuracy delta, graded requests."""
        return (f"router {router}: {format_savings(self.savings_ratio)} saved vs always {baseline_model} "
                f"(${self.comparable_spend_micro_usd / 1e6:.2f} vs ${self.baseline_micro_usd / 1e6:.2f}); "
                f"accuracy {format_delta(self.accuracy_delta)} vs always {baseline_model} "
                f"on {self.graded:,} graded requests; escalation overhead ${self.overhead_micro_usd / 1e6:.2f}")


def format_savings(ratio: float | None) -> str:
    return "–" if ratio is None else f"{100 * ratio:.1f}%"


def format_delta(delta: float | None) -> str:
    """Accuracy delta in percentage points, signed; "ungraded" when no request was graded."""
    return "ungraded" if delta is None else f"{100 * delta:+.1f} pt"


def router_label(classifier: str | None, router_version: str | None) -> str:
    """How a router is named next to its savings: the seed heuristic, or the trained classifier with its artifact
    version (``requests.router_version``: "artifact:<digest prefix>" or "heuristic:<policy>")."""
    if classifier == "heuristic" and (router_version is None or router_version.startswith("heuristic")):
        return "seed heuristic (untrained)"
    if router_version and router_version.startswith("artifact:"):
        return f"trained {classifier or 'classifier'} {router_version}"
    return " ".join(part for part in (classifier, router_version) if part) or "unknown router"


def paired_delta_ci95(graded: int, delta: float | None, discordant: int) -> tuple[float, float] | None:
    """Normal-approximation 95 % interval of the accuracy delta over ``graded`` paired requests, ``discordant`` of
    which the router and the expensive model graded differently (per request the difference is -1, 0 or +1, so
    its mean square is discordant / graded). None with fewer than two graded requests."""
    if delta is None or graded < 2:
        return None
    variance = max(discordant / graded - delta * delta, 0.0) * graded / (graded - 1)
    half = 1.959964 * (variance / graded) ** 0.5
    return delta - half, delta + half


def format_delta_ci95(interval: tuple[float, float] | None) -> str:
    """The interval as the savings line's suffix ("" when there is none)."""
    return "" if interval is None else f"; accuracy delta 95% CI {100 * interval[0]:+.1f} to {100 * interval[1]:+.1f} pt"
