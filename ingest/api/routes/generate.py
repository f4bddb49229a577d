"""POST /generate: publish the prompt and answer with its completion."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ingest.api.deps import BridgeDep, CurrentKey, GatekeeperDep, SettingsDep, check_prompt_size, tenant_for
from ingest.api.errors import ApiError, ErrorOut
from ingest.api.schemas import GenerateIn, GenerateOut
from ingest.bridge import GenerateTimeout

router = APIRouter(tags=["generate"])


@router.post("/generate", response_model=GenerateOut,
             responses={400: {"model": ErrorOut}, 403: {"model": ErrorOut}, 409: {"model": ErrorOut},
                        429: {"model": ErrorOut, "description": "rate_limit_exceeded or budget_exceeded"},
                        502: {"description": "every model failed"},
                        504: {"description": "no answer in time; the request is still processed and recorded"}})
async def generate(body: GenerateIn, key: CurrentKey, settings: SettingsDep, bridge: BridgeDep,
                   gatekeeper: GatekeeperDep):
    check_prompt_size(body, settings)
    message = body.to_message(settings.default_max_tokens, tenant_for(body, key))
    if bridge.is_waiting(message.request_id):
        raise ApiError(409, f"request {message.request_id} is already in flight", "request_in_flight",
                       param="request_id")
    admitted = await gatekeeper.admit(message, key)
    message, headers = admitted.message, admitted.headers
    if admitted.duplicate:
        raise ApiError(409, f"request {message.request_id} was already accepted: GET /requests/{message.request_id}",
                       "request_already_accepted", param="request_id", headers=headers)
    timeout_s = min(body.timeout_s or settings.generate_timeout_s, settings.generate_timeout_s)
    try:
        completion = await bridge.generate(message, timeout_s, on_publish_error=gatekeeper.release)
    except GenerateTimeout as exc:
        return JSONResponse(status_code=504, headers=headers, content={
            "request_id": exc.request_id,
            "detail": f"no answer within {exc.timeout_s:g}s; the request is still being processed and will be "
                      f"recorded: GET /requests/{exc.request_id}",
        })
    out = GenerateOut.from_completion(completion)
    if completion.status != "ok":
        return JSONResponse(status_code=502, content=out.model_dump(mode="json"), headers=headers)
    return JSONResponse(content=out.model_dump(mode="json"), headers=headers)
