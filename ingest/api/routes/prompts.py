"""POST /prompts: publish and return at once (202) with the request id."""

from __future__ import annotations

from aiokafka.errors import KafkaError
from fastapi import APIRouter

from ingest.accept import unwind_ledger, with_deadline, write_ledger
from ingest.api.deps import BridgeDep, OptionalPoolDep, SettingsDep, check_prompt_size
from ingest.api.schemas import Accepted, PromptIn

router = APIRouter(tags=["prompts"])


@router.post("/prompts", status_code=202, response_model=Accepted)
async def submit_prompt(body: PromptIn, settings: SettingsDep, bridge: BridgeDep, pool: OptionalPoolDep) -> Accepted:
    check_prompt_size(body, settings)
    message = with_deadline(body.to_message(settings.default_max_tokens), settings)
    if not await write_ledger(pool, message, settings):
        # A retry of a request already accepted (its first 202 may have been lost): publishing it again would
        # call a model twice. The ledger row guarantees it is recorded (the reconciler republishes it if needed).
        return Accepted(request_id=message.request_id, status_url=f"/requests/{message.request_id}")
    try:
        await bridge.publish(message)
    except KafkaError:
        await unwind_ledger(pool, message.request_id)
        raise
    return Accepted(request_id=message.request_id, status_url=f"/requests/{message.request_id}")
