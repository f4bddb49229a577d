"""Routing policies: from a classifier's prediction to a model on the ladder, with the reasons why.

A policy is chosen by name from ``routing.registry.POLICIES`` (RouteLLM-style registry). Every policy shares the
guard rails in ``RoutingPolicy.decide``: keyword overrides, the premium tier bump and the
context-window check, so a calibrated policy cannot skip them.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from core.messages import TIER_ORDER, Prediction, PromptMessage, RoutingDecision, Tier
from core.registry import ModelRegistry, ModelSpec

# Counts the prompt's tokens for a given model; used for the context-window check.
TokenCounter = Callable[[ModelSpec, str], int]

OVERRIDE_KEYWORDS = ("production", "legal", "medical", "architecture", "optimize", "compliance")


def approximate_token_count(model: ModelSpec, text: str) -> int:
    """A deliberately high estimate (3 chars per token) for when no tokenizer is wired in."""
    return len(text) // 3 + 1


# No tokenizer in use makes more than one token per UTF-8 byte (byte-level BPE; SentencePiece with byte
# fallback adds at most a prefix piece), and no chat template adds this many: a conversation whose bytes, doubled,
# plus this and the output budget fit a model's window fits it for sure, and its tokens need no counting.
CHAT_TEMPLATE_TOKENS_AT_MOST = 256


def fits_for_sure(text: str, max_tokens: int, context_window: int) -> bool:
    """True when ``text`` plus ``max_tokens`` fits ``context_window`` whatever the tokenizer (see above)."""
    return 2 * len(text.encode("utf-8")) + CHAT_TEMPLATE_TOKENS_AT_MOST + max_tokens <= context_window


def _bump(tier: Tier, levels: int = 1) -> Tier:
    return TIER_ORDER[min(TIER_ORDER.index(tier) + levels, len(TIER_ORDER) - 1)]


class RoutingPolicy(ABC):
    name: ClassVar[str] = "abstract"

    def __init__(
        self,
        override_keywords: tuple[str, ...] = OVERRIDE_KEYWORDS,
        premium_bump: bool = True,
        token_counter: TokenCounter = approximate_token_count,
    ) -> None:
        self.override_keywords = tuple(override_keywords)
        self._override_re = (
            re.compile(r"\b(" + "|".join(map(re.escape, self.override_keywords)) + r")\w*\b", re.IGNORECASE)
            if self.override_keywords
            else None
        )
        self.premium_bump = premium_bump
        self.token_counter = token_counter

    @abstractmethod
    def base_tier(self, prediction: Prediction, prompt: PromptMessage) -> tuple[Tier, str]:
        """The tier this policy picks from the prediction alone, and why."""

    def params(self) -> dict[str, Any]:
        """Tunable knobs, as saved in a classifier artifact."""
        return {}

    def decide(
        self,
        prompt: PromptMessage,
        prediction: Prediction,
        registry: ModelRegistry,
        classifier_name: str,
    ) -> RoutingDecision:
        tier, reason = self.base_tier(prediction, prompt)
        reasons = [reason]

        if self._override_re is not None:
            match = self._override_re.search(prompt.prompt)
            if match and tier != Tier.expensive:
                new_tier = _bump(tier)
                reasons.append(f"keyword override {match.group(1).lower()!r}: {tier.value} -> {new_tier.value}")
                tier = new_tier

        if self.premium_bump and prompt.customer_tier == "premium" and tier != Tier.expensive:
            new_tier = _bump(tier)
            reasons.append(f"premium customer: {tier.value} -> {new_tier.value}")
            tier = new_tier

        # A conversation kept on its model: never cheaper than an earlier turn's model.
        if prompt.min_tier is not None and TIER_ORDER.index(prompt.min_tier) > TIER_ORDER.index(tier):
            reasons.append(f"conversation kept on {prompt.min_tier.value}: {tier.value} -> {prompt.min_tier.value}")
            tier = prompt.min_tier

        # Tools only go to a model that declares tool support (the top tier when none does).
        if prompt.has_tools:
            while tier != Tier.expensive and not registry.by_tier(tier).supports_tools:
                new_tier = _bump(tier)
                reasons.append(f"tools: {registry.by_tier(tier).name} does not support tools: "
                               f"{tier.value} -> {new_tier.value}")
                tier = new_tier

        # Escalate while the conversation plus the requested output does not fit the model's context window.
        while tier != Tier.expensive:
            spec = registry.by_tier(tier)
            # Most prompts are far shorter than any window: counting their tokens was ~5% of a worker's CPU.
            if fits_for_sure(prompt.conversation_text, prompt.max_tokens, spec.context_window):
                break
            needed = self.token_counter(spec, prompt.conversation_text) + prompt.max_tokens
            if needed <= spec.context_window:
                break
            new_tier = _bump(tier)
            reasons.append(
                f"context: {needed} tokens exceed {spec.name}'s window of {spec.context_window}: "
                f"{tier.value} -> {new_tier.value}"
            )
            tier = new_tier

        model = registry.by_tier(tier)
        return RoutingDecision(
            label=prediction.label,
            confidence=prediction.confidence,
            probabilities=prediction.probabilities,
            model=model.name,
            tier=tier,
            reasons=reasons,
            policy=self.name,
            classifier=classifier_name,
        )


class ThresholdPolicy(RoutingPolicy):
    """The seed's rule: simple and sure -> cheap; medium and sure -> mid; otherwise expensive."""

    name = "threshold"

    def __init__(self, simple_threshold: float = 0.7, medium_threshold: float = 0.6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.simple_threshold = simple_threshold
        self.medium_threshold = medium_threshold

    def params(self) -> dict[str, Any]:
        return {"simple_threshold": self.simple_threshold, "medium_threshold": self.medium_threshold}

    def base_tier(self, prediction: Prediction, prompt: PromptMessage) -> tuple[Tier, str]:
        label, conf = prediction.label, prediction.confidence
        if label == "simple" and conf >= self.simple_threshold:
            return Tier.cheap, f"simple with confidence {conf:.2f} >= {self.simple_threshold:.2f}"
        if label == "medium" and conf >= self.medium_threshold:
            return Tier.mid, f"medium with confidence {conf:.2f} >= {self.medium_threshold:.2f}"
        if label == "complex":
            return Tier.expensive, f"complex with confidence {conf:.2f}"
        threshold = self.simple_threshold if label == "simple" else self.medium_threshold
        return Tier.expensive, f"{label} with confidence {conf:.2f} < {threshold:.2f}"
