"""Provider agents, one per configured model: ``route.<model>`` -> call the ladder -> completions (+ reply_to)."""

from __future__ import annotations

import asyncio
import logging

import faust

from core.messages import ChunkMessage, CompletionMessage, ParkedNotice, RoutedMessage, RoutingDecision, utcnow
from core.registry import ModelSpec
from providers.executor import AlreadyAnswered
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
                                                      partition=0, headers=COMPLETION_HEADERS),
                               timeout=context.settings.reply_publish_timeout_s)
    except Exception as exc:  # noqa: BLE001 - a lost reply only means /generate answers 504
        log.warning("reply for %s to %s not delivered: %s: %s", completion.request_id, reply_to,
                    type(exc).__name__, exc)


# Record headers telling the API process which message type a reply is.
CHUNK_HEADERS = [("type", b"chunk")]
COMPLETION_HEADERS = [("type", b"completion")]
PARKED_HEADERS = [("type", b"parked")]


async def publish_parked(context: PipelineContext, reply_to: str | None, notice: ParkedNotice) -> None:
    """Best effort, like the reply: tells a waiting /generate or gateway call that its request is parked."""
    if not reply_to:
        return
    try:
        producer = await context.reply_producer()
        await asyncio.wait_for(producer.send_and_wait(reply_to, notice.to_bytes(), notice.request_id.encode(),
                                                      partition=0, headers=PARKED_HEADERS),
                               timeout=context.settings.reply_publish_timeout_s)
    except Exception as exc:  # noqa: BLE001 - the caller then sees a plain timeout
        log.warning("parked notice for %s to %s not delivered: %s: %s", notice.request_id, reply_to,
                    type(exc).__name__, exc)


class ReplyStream:
    """Publishes a streamed answer's text to the waiting API process as ChunkMessages, in order: every chunk goes
    to partition 0 of its reply topic from one producer, numbered by ``seq``, and the completion is published only
    after every chunk is acknowledged. Best effort like the reply itself: Postgres is the record."""

    def __init__(self, context: PipelineContext, request_id: str, reply_to: str) -> None:
        self.context = context
        self.request_id = request_id
        self.reply_to = reply_to
        self.sent = 0
        self.first_at = None
        self.failed = False
        self._pending: list[asyncio.Future] = []

    async def __call__(self, model: str, text: str) -> None:
        if self.failed:
            return
        chunk = ChunkMessage(request_id=self.request_id, seq=self.sent, model=model, text=text)
        try:
            producer = await self.context.reply_producer()
            # send() queues in order without waiting for the ack, so a slow ack never holds the model's stream.
            self._pending.append(await producer.send(self.reply_to, chunk.to_bytes(), self.request_id.encode(),
                                                     partition=0, headers=CHUNK_HEADERS))
        except Exception as exc:  # noqa: BLE001 - the caller is gone or the broker refused: stop streaming
            self.failed = True
            log.warning("stream for %s to %s stopped: %s: %s", self.request_id, self.reply_to,
                        type(exc).__name__, exc)
            return
        if self.first_at is None:
            self.first_at = utcnow()
        self.sent += 1

    async def flush(self) -> None:
        if self._pending:
            try:
                await asyncio.wait_for(asyncio.gather(*self._pending),
                                       timeout=self.context.settings.reply_publish_timeout_s)
            except Exception as exc:  # noqa: BLE001 - see __call__
                log.warning("stream for %s not fully delivered: %s: %s", self.request_id, type(exc).__name__, exc)


async def handle_routed(context: PipelineContext, spec: ModelSpec, event: faust.EventT) -> None:
    routed = await context.parse_or_dead_letter(event, RoutedMessage, f"provider:{spec.name}")
    if routed is None:
        return
    request_id = routed.prompt.request_id
    # A redelivered or republished request whose answer is already recorded is not paid for again (checked
    # with its first call's start record, in one database flush), and a second copy of a request this worker is
    # answering right now waits for nothing: the first records it.
    if request_id in context.in_flight:
        context.metrics.reused.labels("in_flight").inc()
        return
    context.in_flight.add(request_id)
    try:
        await answer(context, spec, event, routed)
    except AlreadyAnswered:
        context.metrics.reused.labels("recorded").inc()
    finally:
        context.in_flight.discard(request_id)


async def predicted(context: PipelineContext, routed: RoutedMessage) -> RoutingDecision:
    """The routed decision with the default router's prediction for its prompt (recorded for A/B); unchanged
    (recorded as unclassified) when the classifier fails, since the answer stands either way."""
    router = context.runtime.router
    try:
        # Off the event loop: a trained classifier is CPU work and must not hold up the stream's chunks.
        return await asyncio.to_thread(router.with_prediction, routed.decision, prompt=routed.prompt)
    except Exception:
        log.exception("no prediction for direct request %s", routed.prompt.request_id)
        return routed.decision


async def answer(context: PipelineContext, spec: ModelSpec, event: faust.EventT, routed: RoutedMessage) -> None:
    message = event.message
    calls = None
    if context.settings.pg_dsn:
        delivery = f"{message.topic}/{message.partition}/{message.offset}/{context.duties.worker_id}"
        calls = context.calls.for_delivery(routed.prompt.request_id, delivery, check_answered=True)
    prompt = routed.prompt
    stream = ReplyStream(context, prompt.request_id, prompt.reply_to) if prompt.stream and prompt.reply_to else None
    # A direct request the API sent here unclassified: the prediction is made while the model answers.
    prediction = (asyncio.create_task(predicted(context, routed), name=f"predict-{prompt.request_id}")
                  if routed.decision.label is None else None)
    try:
        # While the request can still be parked and retried, an open circuit with no allowed fallback is waited
        # out rather than called; a failure because the allowed models are down parks it (stream_processors/
        # parking.py) instead of recording it failed, until no retry fits before its deadline.
        completion = await context.runtime.executor_for(routed.decision).run(
            routed, calls, stream=stream, wait_out_open_circuit=context.parking.may_wait(routed))
        if calls is not None and not calls.checked and await context.already_answered(prompt.request_id):
            raise AlreadyAnswered(prompt.request_id)  # no call made (circuit open): not parked or failed again
        completion = await context.parking.park_or_give_up(
            routed, completion, on_parked=lambda notice: publish_parked(context, prompt.reply_to, notice))
        if completion is None:
            return  # parked: acknowledged, published back to its route topic at its retry time
        if prediction is not None:
            completion = completion.model_copy(update={"decision": await prediction})
        if stream is not None:
            await stream.flush()
            first_token_at = stream.first_at or utcnow()  # held back for its checks: the completion is the first
            completion = completion.model_copy(update={
                "streamed_chunks": stream.sent,
                "ttft_ms": max((first_token_at - prompt.created_at).total_seconds() * 1000, 0.0)})
    except AlreadyAnswered:
        raise
    except Exception as exc:
        log.exception("ladder failed on %s", routed.prompt.request_id)
        await context.dead_letter(event, f"provider:{spec.name}", f"ladder failed: {type(exc).__name__}: {exc}")
        return
    finally:
        if prediction is not None and not prediction.done():
            prediction.cancel()  # parked, failed or cancelled: the next try predicts again
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
