"""POST /prompts: publish and return at once (202) with the request id."""

from __future__ import annotations

from fastapi import APIRouter

from ingest.api.deps import BridgeDep, SettingsDep, check_prompt_size
from ingest.api.schemas import Accepted, PromptIn

router = APIRouter(tags=["prompts"])


@router.post("/prompts", status_code=202, response_model=Accepted)
async def submit_prompt(body: PromptIn, settings: SettingsDep, bridge: BridgeDep) -> Accepted:
    check_prompt_size(body, settings)
    message = body.to_message(settings.default_max_tokens)
    await bridge.publish(message)
    return Accepted(request_id=message.request_id, status_url=f"/requests/{message.request_id}")
