"""What happens after a model answers or fails: accept, escalate on a poor answer, or fall back on error.

This is the one escalation code path. The live provider agent calls it after every attempt, and the
offline harness replays it on recorded responses, so both charge for exactly the same calls.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.messages import TIER_ORDER, Attempt, PromptMessage, Tier
from core.registry import ModelRegistry, ModelSpec
from routing.answer_checks import ANSWER_CHECKS, DEFAULT_CHECKS, Answer, AnswerCheck, Rejection


class Escalation:
    """Decides the next model after an attempt, on the registry's ladder."""

    def __init__(
        self,
        registry: ModelRegistry,
        checks: Sequence[AnswerCheck] | None = None,
        max_escalations: int = 1,
    ) -> None:
        self.registry = registry
        self.checks = list(checks) if checks is not None else [ANSWER_CHECKS[n]() for n in DEFAULT_CHECKS]
        self.max_escalations = max_escalations

    def rejection(self, prompt: PromptMessage, answer: Answer) -> Rejection | None:
        """The first check that refuses the answer, with its reason; None to accept the answer."""
        for check in self.checks:
            reason = check.reject_reason(prompt, answer)
            if reason:
                return Rejection(check.reason_kind, reason)
        return None

    def reject_reason(self, prompt: PromptMessage, answer: Answer) -> str | None:
        rejection = self.rejection(prompt, answer)
        return rejection.reason if rejection else None

    def _tried(self, attempts: Sequence[Attempt]) -> set[str]:
        return {a.model for a in attempts}

    def next_after_rejection(self, current: ModelSpec, attempts: Sequence[Attempt],
                             plan: Sequence[str] = ()) -> ModelSpec | None:
        """The next model, if escalations are left: the decision's plan when it has one (a pool),
        else the next tier up. ``attempts`` includes the rejected one."""
        escalations = sum(1 for a in attempts if a.status == "rejected")
        if escalations > self.max_escalations:
            return None
        tried = self._tried(attempts)
        if plan:
            return next((self.registry.get(name) for name in plan if name not in tried), None)
        for tier in TIER_ORDER[TIER_ORDER.index(current.tier) + 1 :]:
            spec = self.registry.by_tier(tier)
            if spec.name not in tried:
                return spec
        return None

    def next_after_error(self, current: ModelSpec, attempts: Sequence[Attempt],
                         plan: Sequence[str] = ()) -> ModelSpec | None:
        """Fall back along the plan, then to the reference model (a pool); on a ladder to the next tier
        up not yet tried, and from the top to the best tier below it."""
        tried = self._tried(attempts)
        if plan or self.registry.pool:
            order = [*plan, self.registry.counterfactual_model.name]
            return next((self.registry.get(name) for name in order if name not in tried), None)
        index = TIER_ORDER.index(current.tier)
        order_tiers: list[Tier] = list(TIER_ORDER[index + 1 :]) + list(reversed(TIER_ORDER[:index]))
        for tier in order_tiers:
            spec = self.registry.by_tier(tier)
            if spec.name not in tried:
                return spec
        return None
