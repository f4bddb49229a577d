"""The feedback agent: feedback topic -> ``model_eval``, one grade per (request, source), idempotent.

Producers send a ``FeedbackMessage`` naming the request's tenant. A grade for a request that is not
recorded yet is retried for ``feedback_wait_for_request_s`` (the sink may still be writing it), then
dead-lettered like a grade for another tenant's request: nothing is written for either.
"""

from __future__ import annotations

import asyncio
import logging
import time

import faust

from core.messages import FeedbackMessage
from sql.repository import UnknownRequest, record_feedback
from stream_processors.agents.sink import _retrying
from stream_processors.context import PipelineContext

log = logging.getLogger(__name__)

UNKNOWN_REQUEST_RETRY_S = 1.0


async def handle_feedback(context: PipelineContext, event: faust.EventT) -> None:
    feedback = await context.parse_or_dead_letter(event, FeedbackMessage, "feedback")
    if feedback is None:
        return
    pool = await context.pool()
    deadline = time.monotonic() + context.settings.feedback_wait_for_request_s

    async def write() -> str:
        async with pool.connection() as conn, conn.transaction():
            return await record_feedback(conn, feedback, context.settings.feedback_pass_score)

    while True:
        try:
            await _retrying(write)
            return
        except UnknownRequest as exc:
            if time.monotonic() >= deadline:
                await context.dead_letter(event, "feedback", f"feedback refused: {exc}")
                return
            await asyncio.sleep(UNKNOWN_REQUEST_RETRY_S)
        except Exception as exc:  # noqa: BLE001 - refused by the database: keep it as a dead letter
            await context.dead_letter(event, "feedback", f"database refused the feedback: {type(exc).__name__}: {exc}")
            return


def register(app: faust.App, context: PipelineContext) -> None:
    async def feedback(stream: faust.StreamT) -> None:
        manual = stream.noack()
        async for event in manual.events():
            await handle_feedback(context, event)
            await manual.ack(event)

    app.agent(context.feedback_topic, name="feedback", concurrency=4)(feedback)
