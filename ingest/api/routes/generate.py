"""POST /generate: publish the prompt and answer with its completion."""

from __future__ import annotations

import logging

from aiokafka.errors import KafkaError
from fastapi import APIRouter
from fastapi.responses import JSONResponse

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
from ingest.api.errors import ApiError, ErrorOut
from ingest.api.schemas import GenerateIn, GenerateOut
from ingest.bridge import GenerateTimeout

log = logging.getLogger(__name__)

router = APIRouter(tags=["generate"])

# When every model failed, how long the client should wait before trying again: the providers' circuit
# breakers let one call through after their cooldown.
RETRY_AFTER_FAILED_S = 30


@router.post("/generate", response_model=GenerateOut,
             responses={400: {"model": ErrorOut}, 403: {"model": ErrorOut}, 409: {"model": ErrorOut},
                        429: {"model": ErrorOut, "description": "rate_limit_exceeded or budget_exceeded"},
                        503: {"description": "every model failed, or every model the request may use is down and "
                                             "it is parked until its deadline (Retry-After says when to look "
                                             "again), or the broker or database cannot accept the prompt"},
                        504: {"description": "no answer in time; the request is still processed and recorded"}})
async def generate(body: GenerateIn, key: CurrentKey, settings: SettingsDep, bridge: BridgeDep,
                   gatekeeper: GatekeeperDep, pool: OptionalPoolDep):
    check_prompt_size(body, settings)
    message = body.to_message(settings.default_max_tokens, tenant_for(body, key))
    if bridge.is_waiting(message.request_id):
        raise ApiError(409, f"request {message.request_id} is already in flight", "request_in_flight",
                       param="request_id")
    admitted = await gatekeeper.admit(message, key)  # accepted and recorded, or refused
    message, headers = admitted.message, admitted.headers
    timeout_s = min(body.timeout_s or settings.generate_timeout_s, settings.generate_timeout_s)
    if not admitted.first_acceptance:
        raise ApiError(409, f"request {message.request_id} was already accepted: GET /requests/{message.request_id}",
                       "request_already_accepted", param="request_id", headers=headers)
    try:
        completion = await bridge.generate(message, timeout_s, on_publish_error=gatekeeper.release)
    except GenerateTimeout as exc:
        if exc.parked is not None:
            return JSONResponse(status_code=503, headers={**headers, "Retry-After": str(exc.retry_after_s())},
                                content={"request_id": exc.request_id, "code": "models_unavailable",
                                         "retry_at": exc.parked.retry_at.isoformat(),
                                         "deadline_at": exc.parked.deadline_at.isoformat(),
                                         "detail": exc.parked_detail()})
        return JSONResponse(status_code=504, headers={**headers, "Retry-After": str(max(1, round(exc.timeout_s)))},
                            content={
            "request_id": exc.request_id,
            "detail": f"no answer within {exc.timeout_s:g}s; the request is still being processed and will be "
                      f"recorded: GET /requests/{exc.request_id}",
        })
    except KafkaError:
        await unwind_ledger(pool, message.request_id)
        raise
    out = GenerateOut.from_completion(completion)
    if completion.status != "ok":
        return JSONResponse(status_code=503, headers={**headers, "Retry-After": str(RETRY_AFTER_FAILED_S)},
                            content=out.model_dump(mode="json"))
    return JSONResponse(content=out.model_dump(mode="json"), headers=headers)
