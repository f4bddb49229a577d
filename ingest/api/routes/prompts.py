"""POST /prompts: publish and return at once (202) with the request id."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ingest.api.deps import BridgeDep, CurrentKey, GatekeeperDep, SettingsDep, check_prompt_size, tenant_for
from ingest.api.errors import ErrorOut
from ingest.api.schemas import Accepted, PromptIn

router = APIRouter(tags=["prompts"])


@router.post("/prompts", status_code=202, response_model=Accepted,
             responses={400: {"model": ErrorOut}, 403: {"model": ErrorOut}, 409: {"model": ErrorOut},
                        429: {"model": ErrorOut, "description": "rate_limit_exceeded or budget_exceeded"}})
async def submit_prompt(body: PromptIn, key: CurrentKey, settings: SettingsDep, bridge: BridgeDep,
                        gatekeeper: GatekeeperDep, response: Response) -> Accepted:
    check_prompt_size(body, settings)
    admitted = await gatekeeper.admit(body.to_message(settings.default_max_tokens, tenant_for(body, key)), key)
    message = admitted.message
    response.headers.update(admitted.headers)
    if not admitted.duplicate:  # a retry of an accepted request id is not sent to the models again
        try:
            await bridge.publish(message)
        except BaseException:
            await gatekeeper.release(message.request_id)
            raise
    return Accepted(request_id=message.request_id, status_url=f"/requests/{message.request_id}")
