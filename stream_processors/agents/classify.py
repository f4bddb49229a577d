"""Classify and route: prompts topic -> ``route.<model>``, in batches through the shared Router."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import faust

from core.messages import PromptMessage, RoutedMessage
from routing.guardrails.limits import prompt_breaches
from routing.router import capped
from stream_processors.agents.batching import register_batch_agent
from stream_processors.context import PipelineContext

log = logging.getLogger(__name__)


async def admissible(context: PipelineContext, parsed: list[tuple[faust.EventT, PromptMessage]]
                     ) -> list[tuple[faust.EventT, PromptMessage]]:
    """Producers writing straight to the prompts topic get the API's limits too (and a reply_to must name one of
    this router's reply topics): a message that breaks them is dead-lettered with the reason."""
    kept = []
    for event, prompt in parsed:
        breaches = prompt_breaches(prompt, context.settings)
        if breaches:
            await context.dead_letter(event, "classify", "refused: " + "; ".join(b.reason for b in breaches))
        else:
            kept.append((event, prompt))
    return kept


async def route_batch(context: PipelineContext, events: Sequence[faust.EventT]) -> None:
    parsed = await admissible(context, await context.parse_batch(events, PromptMessage, "classify"))
    if not parsed:
        return
    # By experiment arm (routing.experiments) where an experiment runs; the default router otherwise.
    router = context.runtime.arm_router or context.runtime.router
    prompts = [prompt for _, prompt in parsed]
    try:
        # Off the event loop: a trained classifier is CPU work and must not starve heartbeats.
        decisions = await asyncio.to_thread(router.route, prompts)
    except Exception:  # one bad prompt must not sink its batch: route one by one to find it
        log.exception("routing a batch of %d failed; routing one by one", len(prompts))
        decisions = []
        for event, prompt in parsed:
            try:
                decisions.extend(await asyncio.to_thread(router.route, [prompt]))
            except Exception as exc:  # noqa: BLE001 - recorded in the dead letter
                decisions.append(None)
                await context.dead_letter(event, "classify", f"routing failed: {type(exc).__name__}: {exc}")
    deliveries = []
    for (event, prompt), decision in zip(parsed, decisions, strict=True):
        if decision is None:
            continue
        # After the experiment arms too: a control arm's model is capped like any other choice.
        decision = capped(decision, prompt, context.runtime.registry)
        topic = context.route_topics.get(decision.model)
        if topic is None:
            await context.dead_letter(event, "classify", f"policy chose unknown model {decision.model!r}")
            continue
        routed = RoutedMessage(prompt=prompt, decision=decision, target_model=decision.model)
        deliveries.append(deliver_or_dead_letter(context, event, topic, prompt.request_id, routed.to_bytes()))
    # Offsets are committed after this batch returns: wait until the broker has every routed message.
    await asyncio.gather(*deliveries)


async def deliver_or_dead_letter(context: PipelineContext, event: faust.EventT, topic: faust.TopicT,
                                 request_id: str, value: bytes) -> None:
    try:
        await context.deliver(topic, request_id.encode(), value)
    except Exception as exc:  # noqa: BLE001 - a permanent broker refusal (e.g. too large): keep it as a dead letter
        await context.dead_letter(event, "classify", f"could not publish to {topic.get_topic_name()}: "
                                                     f"{type(exc).__name__}: {exc}")


def register(app: faust.App, context: PipelineContext) -> None:
    settings = context.settings
    register_batch_agent(app, context.prompts_topic, name="classify", batch_max=settings.classify_batch_max,
                         within_s=settings.batch_within_s, concurrency=settings.classify_concurrency,
                         handle_batch=lambda events: route_batch(context, events))
