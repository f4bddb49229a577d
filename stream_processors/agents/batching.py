"""A batched Faust agent whose offsets are committed only for messages its handler has made safe."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import faust

BatchHandler = Callable[[Sequence[faust.EventT]], Awaitable[object]]


def register_batch_agent(app: faust.App, topic: faust.TopicT, *, name: str, batch_max: int, concurrency: int,
                         handle_batch: BatchHandler) -> None:
    async def agent(stream: faust.StreamT) -> None:
        # A batch is what has arrived by the time the handler is free, up to batch_max: a lone message is handled
        # at once, and under load batches grow while the previous one is handled. (Faust's take() instead holds
        # every message until its timer fires, a few milliseconds on each hop of a request.)
        # Manual acks: a batch's offsets are committed only after the handler has written, forwarded or
        # dead-lettered every message in it, never because the worker stopped half way through.
        manual = stream.noack()
        batch: list[faust.EventT] = []
        async for event in manual.events():
            batch.append(event)
            if len(batch) < batch_max and not stream.channel.empty():
                continue  # more is already waiting: take it into this batch
            events, batch = batch, []
            await handle_batch(events)
            for handled in events:
                await manual.ack(handled)

    agent.__name__ = agent.__qualname__ = name
    app.agent(topic, name=name, concurrency=concurrency)(agent)
