"""A batched Faust agent whose offsets are committed only for messages its handler has made safe."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import faust

BatchHandler = Callable[[Sequence[faust.EventT]], Awaitable[object]]


def register_batch_agent(app: faust.App, topic: faust.TopicT, *, name: str, batch_max: int, within_s: float,
                         concurrency: int, handle_batch: BatchHandler) -> None:
    async def agent(stream: faust.StreamT) -> None:
        # Manual acks: a batch's offsets are committed only after the handler has written, forwarded or
        # dead-lettered every message in it, never because the worker stopped half way through.
        async for events in stream.noack_take(batch_max, within=within_s):
            await handle_batch(events)
            for event in events:
                await stream.ack(event)

    agent.__name__ = agent.__qualname__ = name
    app.agent(topic, name=name, concurrency=concurrency)(agent)
