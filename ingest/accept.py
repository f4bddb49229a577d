"""Accepting a request: its ledger row first, then the broker. Accepted means recorded (docs/reliability.md).

The ledger row is written before the prompt is published (in the admission transaction, ``Gatekeeper.admit``),
so a request the client was told is accepted can always be found by the reconciler, even if the broker then
loses it. When the database cannot take the row, the request is refused with 503 rather than accepted without
a record; when the broker refuses the prompt, the row is removed again here and the client gets 503 (nothing
was accepted).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from psycopg_pool import AsyncConnectionPool

from core.messages import PromptMessage
from core.settings import Settings
from sql.ledger import forget_unpublished

log = logging.getLogger(__name__)


def with_deadline(prompt: PromptMessage, settings: Settings) -> PromptMessage:
    return prompt.model_copy(update={"deadline_at": prompt.created_at + timedelta(seconds=settings.request_deadline_s)})


async def unwind_ledger(pool: AsyncConnectionPool | None, request_id: str) -> None:
    if pool is None:
        return
    try:
        async with pool.connection(timeout=2) as conn:
            await forget_unpublished(conn, request_id)
    except Exception as exc:  # noqa: BLE001 - the reconciler will publish it later: at least once, never lost
        log.warning("could not remove the ledger row of refused request %s: %s", request_id, exc)
