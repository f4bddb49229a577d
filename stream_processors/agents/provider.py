"""Provider agents, one per configured model: ``route.<model>`` -> call the ladder -> completions (+ reply_to)."""

from __future__ import annotations

import asyncio
import logging

import faust

from core.messages import CompletionMessage, RoutedMessage
from core.registry import ModelSpec
from stream_processors.context import PipelineContext

log = logging.getLogger(__name__)


async def publish_reply(context: PipelineContext, completion: CompletionMessage) -> None:
    """Best effort: the waiting API process may be gone; Postgres (via the completions topic) is the record."""
    reply_to = completion.prompt.reply_to
    if not reply_to:
        return
    try:
        producer = await context.reply_producer()
        await asyncio.wait_for(producer.send_and_wait(reply_to, completion.to_bytes(), completion.request_id.encode(),
                                                      partition=0),
                               timeout=context.settings.reply_publish_timeout_s)
    except Exception as exc:  # noqa: BLE001 - a lost reply only means /generate answers 504
        log.warning("reply for %s to %s not delivered: %s: %s", completion.request_id, reply_to,
                    type(exc).__name__, exc)


async def handle_routed(context: PipelineContext, spec: ModelSpec, event: faust.EventT) -> None:
    routed = await context.parse_or_dead_letter(event, RoutedMessage, f"provider:{spec.name}")
    if routed is None:
        return
    request_id = routed.prompt.request_id
    # A redelivered or republished request whose answer is already recorded is not paid for again, and a
    # second copy of a request this worker is answering right now waits for nothing: the first records it.
    if request_id in context.in_flight:
        context.metrics.reused.labels("in_flight").inc()
        return
    if await context.already_answered(request_id):
        context.metrics.reused.labels("recorded").inc()
        return
    context.in_flight.add(request_id)
    try:
        await answer(context, spec, event, routed)
    finally:
        context.in_flight.discard(request_id)


async def answer(context: PipelineContext, spec: ModelSpec, event: faust.EventT, routed: RoutedMessage) -> None:
    message = event.message
    calls = None
    if context.settings.pg_dsn:
        delivery = f"{message.topic}/{message.partition}/{message.offset}/{context.duties.worker_id}"
        calls = context.calls.for_delivery(routed.prompt.request_id, delivery)
    try:
        completion = await context.runtime.executor_for(routed.decision).run(routed, calls)
    except Exception as exc:
        log.exception("ladder failed on %s", routed.prompt.request_id)
        await context.dead_letter(event, f"provider:{spec.name}", f"ladder failed: {type(exc).__name__}: {exc}")
        return
    context.metrics.observe_completion(completion)
    try:
        await asyncio.gather(
            context.deliver(context.completions_topic, completion.request_id.encode(), completion.to_bytes()),
            publish_reply(context, completion))
    except Exception as exc:  # noqa: BLE001 - a permanent broker refusal: keep the request as a dead letter
        await context.dead_letter(event, f"provider:{spec.name}",
                                  f"could not publish the completion: {type(exc).__name__}: {exc}")


def register(app: faust.App, context: PipelineContext, spec: ModelSpec) -> None:
    async def provider(stream: faust.StreamT) -> None:
        # Manual acks: Faust's own iteration acks an event even when its handler is cancelled (worker stop,
        # rebalance); this way an unfinished request is redelivered instead of lost.
        manual = stream.noack()
        async for event in manual.events():
            await handle_routed(context, spec, event)
            await manual.ack(event)

    provider.__name__ = provider.__qualname__ = f"provider_{spec.name}"
    app.agent(context.route_topics[spec.name], name=f"provider-{spec.name}",
              concurrency=context.settings.provider_concurrency)(provider)
