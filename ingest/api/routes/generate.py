"""POST /generate: publish the prompt and answer with its completion."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse

from ingest.api.deps import BridgeDep, SettingsDep, check_prompt_size
from ingest.api.schemas import GenerateIn, GenerateOut
from ingest.bridge import GenerateTimeout

router = APIRouter(tags=["generate"])


@router.post("/generate", response_model=GenerateOut,
             responses={502: {"description": "every model failed"},
                        504: {"description": "no answer in time; the request is still processed and recorded"}})
async def generate(body: GenerateIn, settings: SettingsDep, bridge: BridgeDep):
    check_prompt_size(body, settings)
    message = body.to_message(settings.default_max_tokens)
    if bridge.is_waiting(message.request_id):
        raise HTTPException(409, detail=f"request {message.request_id} is already in flight")
    timeout_s = min(body.timeout_s or settings.generate_timeout_s, settings.generate_timeout_s)
    try:
        completion = await bridge.generate(message, timeout_s)
    except GenerateTimeout as exc:
        return JSONResponse(status_code=504, content={
            "request_id": exc.request_id,
            "detail": f"no answer within {exc.timeout_s:g}s; the request is still being processed and will be "
                      f"recorded: GET /requests/{exc.request_id}",
        })
    out = GenerateOut.from_completion(completion)
    if completion.status != "ok":
        return JSONResponse(status_code=502, content=out.model_dump(mode="json"))
    return out
