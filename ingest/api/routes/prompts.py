"""POST /prompts: publish and return at once (202) with the request id."""

from __future__ import annotations

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Response

from ingest.accept import unwind_ledger
from ingest.api.deps import (
    BridgeDep,
    CurrentKey,
    GatekeeperDep,
    OptionalPoolDep,
    SettingsDep,
    check_prompt_size,
    tenant_for,
)
from ingest.api.errors import ErrorOut
from ingest.api.schemas import Accepted, PromptIn

router = APIRouter(tags=["prompts"])


@router.post("/prompts", status_code=202, response_model=Accepted,
             responses={400: {"model": ErrorOut}, 403: {"model": ErrorOut}, 409: {"model": ErrorOut},
                        429: {"model": ErrorOut, "description": "rate_limit_exceeded or budget_exceeded"},
                        503: {"description": "the broker or the database cannot accept the prompt"}})
async def submit_prompt(body: PromptIn, key: CurrentKey, settings: SettingsDep, bridge: BridgeDep,
                        gatekeeper: GatekeeperDep, pool: OptionalPoolDep, response: Response) -> Accepted:
    check_prompt_size(body, settings)
    admitted = await gatekeeper.admit(body.to_message(settings.default_max_tokens, tenant_for(body, key)), key)
    message = admitted.message
    response.headers.update(admitted.headers)
    accepted = Accepted(request_id=message.request_id, status_url=f"/requests/{message.request_id}")
    if not admitted.first_acceptance:
        # A retry of a request already accepted (its first 202 may have been lost): publishing it again would
        # call a model twice. The ledger row guarantees it is recorded (the reconciler republishes it if needed).
        return accepted
    try:
        await bridge.publish(message)
    except BaseException as exc:
        await gatekeeper.release(message.request_id)
        if isinstance(exc, KafkaError):
            await unwind_ledger(pool, message.request_id)
        raise
    return accepted
