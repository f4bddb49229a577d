"""Replay provider: answers from recorded real outcomes, with the real token counts, for a known prompt.

It lets a machine with no keys and no internet run the router for real: the responses, token counts
and correctness are what the real models produced. A prompt the data does not hold (a user's own prompt)
is answered by the model's ``unrecorded_base_url`` endpoint (the local stub in the demo), labelled
``recorded=False`` and left ungraded; without one it raises ``ProviderError`` and the ladder falls back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable, Mapping

from core.messages import PromptMessage
from core.outcomes import ModelOutcome, OutcomeRecord
from core.registry import ModelSpec
from providers.base import DeltaCallback, Provider, ProviderError, ProviderResult

# Metadata key naming the outcomes record a replayed prompt came from: the same prompt text can occur
# in several records (with different recorded answers), so the offline harness names the one it means.
OUTCOME_ID_KEY = "outcome_id"


class OutcomeIndex:
    """Outcomes by record id when the prompt names one, else by exact prompt text; then by model id."""

    def __init__(self, records: Iterable[OutcomeRecord]) -> None:
        self._by_prompt: dict[str, Mapping[str, ModelOutcome]] = {}
        self._by_id: dict[str, Mapping[str, ModelOutcome]] = {}
        for record in records:
            self._by_prompt[record.prompt] = record.outcomes
            self._by_id[record.id] = record.outcomes

    def __len__(self) -> int:
        return len(self._by_prompt)

    def lookup(self, prompt: str, model_id: str, record_id: str | None = None) -> ModelOutcome | None:
        outcomes = self._by_id.get(record_id) if record_id is not None else self._by_prompt.get(prompt)
        return None if outcomes is None else outcomes.get(model_id)


class ReplayProvider(Provider):
    def __init__(self, spec: ModelSpec, index: OutcomeIndex, unrecorded: Provider | None = None) -> None:
        super().__init__(spec)
        self.index = index
        self.unrecorded = unrecorded

    def _outcome(self, prompt: PromptMessage) -> ModelOutcome | None:
        return self.index.lookup(prompt.prompt, self.spec.provider_model_id, prompt.metadata.get(OUTCOME_ID_KEY))

    def recorded_answer(self, prompt: PromptMessage) -> ProviderResult | None:
        outcome = self._outcome(prompt)
        if outcome is None:
            return None
        return ProviderResult(text=outcome.response, finish_reason="stop", input_tokens=outcome.input_tokens,
                              output_tokens=outcome.output_tokens, latency_ms=0.0, usage_reported=True,
                              correct=outcome.correct, recorded=True)

    async def aclose(self) -> None:
        if self.unrecorded is not None:
            await self.unrecorded.aclose()

    async def complete(self, prompt: PromptMessage, max_output_tokens: int | None = None,
                       on_delta: DeltaCallback | None = None) -> ProviderResult:
        result = await self._replay(prompt, max_output_tokens)
        if on_delta is not None and result.text:
            await on_delta(result.text)  # a recorded answer arrives whole
        return result

    async def _replay(self, prompt: PromptMessage, max_output_tokens: int | None) -> ProviderResult:
        started = time.perf_counter()
        if self.spec.replay_latency_ms:
            await asyncio.sleep(self.spec.replay_latency_ms / 1000)
        outcome = self._outcome(prompt)
        if outcome is None and self.unrecorded is not None:
            result = await self.unrecorded.complete(prompt, max_output_tokens)
            return dataclasses.replace(result, correct=None, recorded=False)
        if outcome is None:
            raise ProviderError(
                f"{self.spec.name}: no recorded outcome for this prompt (replay answers known prompts only)",
                status=404, latency_ms=(time.perf_counter() - started) * 1000,
            )
        # Only the routing policy's budget applies: the recorded answers were produced under the
        # benchmarks' own limits, which the prompt's default max_tokens knows nothing about.
        cut_off = max_output_tokens is not None and outcome.output_tokens > max_output_tokens
        if self.spec.latency is not None:
            # The latency model (models file): time to first token, then the tokens actually produced.
            await asyncio.sleep(self.spec.latency.seconds(max_output_tokens if cut_off else outcome.output_tokens))
        if cut_off:
            return ProviderResult(
                text=truncated_text(outcome.response, outcome.output_tokens, max_output_tokens),
                finish_reason="length",
                input_tokens=outcome.input_tokens,
                output_tokens=max_output_tokens,
                latency_ms=(time.perf_counter() - started) * 1000,
                usage_reported=True,
                correct=False,  # cut off before its final answer: greedy decoding gives the same prefix
                recorded=True,
            )
        return ProviderResult(
            text=outcome.response,
            finish_reason="stop",
            input_tokens=outcome.input_tokens,
            output_tokens=outcome.output_tokens,
            latency_ms=(time.perf_counter() - started) * 1000,
            usage_reported=True,
            correct=outcome.correct,
            recorded=True,
        )


def truncated_text(response: str, output_tokens: int, budget: int) -> str:
    """The recorded response cut to roughly its first ``budget`` tokens (by the share of characters)."""
    return response[: len(response) * budget // max(output_tokens, 1)]
