"""The sink: completions -> Postgres, in batches, idempotent by request id."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import faust
import psycopg
from psycopg_pool import PoolTimeout
from tenacity import AsyncRetrying, before_sleep_log, retry_if_exception_type, wait_exponential

from core.messages import CompletionMessage
from routing.guardrails.pii import stored_form
from sql.keys import Settlement, settle_requests
from sql.repository import upsert_completion, upsert_completions
from stream_processors.agents.batching import register_batch_agent
from stream_processors.context import PipelineContext

log = logging.getLogger(__name__)

# A database that is down or restarting: wait and retry without committing the offsets, never dead-letter.
TRANSIENT_DB_ERRORS = (psycopg.OperationalError, PoolTimeout)


async def _retrying(operation):
    async for attempt in AsyncRetrying(retry=retry_if_exception_type(TRANSIENT_DB_ERRORS),
                                       wait=wait_exponential(multiplier=0.2, max=10),
                                       before_sleep=before_sleep_log(log, logging.WARNING), reraise=True):
        with attempt:
            return await operation()


async def storable_form(context: PipelineContext, completion: CompletionMessage) -> CompletionMessage:
    if completion.prompt.storage == "redacted":
        return await asyncio.to_thread(stored_form, completion, context.settings)
    return completion


def settlement(completion: CompletionMessage) -> Settlement:
    return Settlement(completion.request_id, completion.prompt.tenant, completion.cost_micro_usd,
                      completion.prompt.created_at)


async def write_batch(context: PipelineContext, events: Sequence[faust.EventT]) -> int:
    parsed = await context.parse_batch(events, CompletionMessage, "sink")
    if not parsed:
        return 0
    parsed = [(event, await storable_form(context, completion)) for event, completion in parsed]
    # A stable order keeps two sink actors from deadlocking on the same rows.
    parsed.sort(key=lambda item: item[1].request_id)
    pool = await context.pool()

    async def write_all() -> int:
        async with pool.connection() as conn:
            written = await upsert_completions(conn, [completion for _, completion in parsed])
            # The budget holds of these requests become their real cost (idempotent: settled once per id).
            await settle_requests(conn, [settlement(completion) for _, completion in parsed])
            return written

    try:
        return await _retrying(write_all)
    except Exception:
        log.exception("writing a batch of %d failed; writing one by one", len(parsed))
    written = 0
    for event, completion in parsed:
        async def write_one(completion: CompletionMessage = completion) -> bool:
            async with pool.connection() as conn:
                async with conn.transaction():
                    written = await upsert_completion(conn, completion)
                await settle_requests(conn, [settlement(completion)])
                return written

        try:
            written += await _retrying(write_one)
        except Exception as exc:  # noqa: BLE001 - anything but an outage: keep it as a dead letter, carry on
            await context.dead_letter(event, "sink", f"database refused the completion: {type(exc).__name__}: {exc}")
    return written


def register(app: faust.App, context: PipelineContext) -> None:
    settings = context.settings
    register_batch_agent(app, context.completions_topic, name="sink", batch_max=settings.sink_batch_max,
                         within_s=settings.batch_within_s, concurrency=settings.sink_concurrency,
                         handle_batch=lambda events: write_batch(context, events))
