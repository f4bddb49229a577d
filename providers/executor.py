"""Runs one routed request along the ladder: call, check the answer, escalate or fall back, account cost."""

from __future__ import annotations

from collections.abc import Mapping

from classifier.cascade import Answer, Escalation
from core.messages import Attempt, CompletionMessage, RoutedMessage, utcnow
from providers.base import Provider, ProviderError
from providers.costs import CostBook
from providers.registry import ModelRegistry


class LadderExecutor:
    def __init__(
        self,
        registry: ModelRegistry,
        providers: Mapping[str, Provider],
        escalation: Escalation,
        costs: CostBook,
    ) -> None:
        self.registry = registry
        self.providers = providers
        self.escalation = escalation
        self.costs = costs

    async def run(self, routed: RoutedMessage) -> CompletionMessage:
        prompt = routed.prompt
        attempts: list[Attempt] = list(routed.attempts)
        spec = self.registry.get(routed.target_model)
        priced_at = prompt.created_at
        final = None
        answers: list[Answer] = []
        while spec is not None:
            started = utcnow()
            try:
                result = await self.providers[spec.name].complete(prompt)
            except ProviderError as exc:
                attempt = Attempt(model=spec.name, tier=spec.tier, status="error", started_at=started,
                                  latency_ms=exc.latency_ms, retries=exc.retries, error=str(exc))
                attempts.append(attempt)
                spec = self.escalation.next_after_error(spec, attempts)
                if spec is not None:
                    attempt.next_reason = f"fallback to {spec.name}: {exc}"
                continue
            cost = self.costs.cost_micro_usd(spec.name, result.input_tokens, result.output_tokens, priced_at)
            answer = Answer(spec.name, result.text, result.finish_reason, result.output_tokens,
                            input_tokens=result.input_tokens, previous=tuple(answers),
                            label_probabilities=routed.decision.probabilities)
            answers.append(answer)
            reason = self.escalation.reject_reason(prompt, answer)
            attempt = Attempt(model=spec.name, tier=spec.tier, status="rejected" if reason else "ok",
                              started_at=started, latency_ms=result.latency_ms, input_tokens=result.input_tokens,
                              output_tokens=result.output_tokens, cost_micro_usd=cost,
                              finish_reason=result.finish_reason, retries=result.retries, error=reason)
            attempts.append(attempt)
            final = (spec, result)
            if reason is None:
                break
            next_spec = self.escalation.next_after_rejection(spec, attempts)
            if next_spec is None:
                break  # nothing left to escalate to: keep the best answer we have
            attempt.next_reason = f"escalate to {next_spec.name}: {reason}"
            spec = next_spec

        counterfactual = self.registry.counterfactual_model
        total_cost = sum(a.cost_micro_usd for a in attempts)
        if final is None:
            return CompletionMessage(
                request_id=prompt.request_id, prompt=prompt, decision=routed.decision, attempts=attempts,
                status="failed", final_model=None, response=None, cost_micro_usd=total_cost,
                counterfactual_model=counterfactual.name,
                error=attempts[-1].error if attempts else "no attempt made",
            )
        final_spec, result = final
        in_tokens, out_tokens = result.input_tokens, result.output_tokens
        return CompletionMessage(
            request_id=prompt.request_id, prompt=prompt, decision=routed.decision, attempts=attempts,
            status="ok", final_model=final_spec.name, response=result.text, finish_reason=result.finish_reason,
            input_tokens=in_tokens, output_tokens=out_tokens, cost_micro_usd=total_cost,
            counterfactual_model=counterfactual.name,
            counterfactual_cost_micro_usd=self.costs.cost_micro_usd(counterfactual.name, in_tokens, out_tokens,
                                                                    priced_at),
            correct=result.correct,
        )
