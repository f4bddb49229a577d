"""POST /v1/feedback: grade one of the caller's requests (thumbs and/or a 1-5 score) into ``model_eval``."""

from __future__ import annotations

import psycopg
from fastapi import APIRouter, HTTPException
from psycopg_pool import PoolTimeout

from core.messages import FeedbackMessage
from ingest.api.deps import PoolDep, SettingsDep, TenantDep
from ingest.api.schemas import FeedbackIn, FeedbackOut
from sql.repository import UnknownRequest, feedback_passes, record_feedback

router = APIRouter(tags=["feedback"])


@router.post("/v1/feedback", response_model=FeedbackOut,
             responses={400: {"description": "the body is not JSON; nothing written"},
                        404: {"description": "no such request recorded for the caller's tenant; nothing written"},
                        422: {"description": "invalid feedback (no grade, score out of 1-5, ...); nothing written"}})
async def post_feedback(body: FeedbackIn, tenant: TenantDep, settings: SettingsDep, pool: PoolDep) -> FeedbackOut:
    if body.pass_fail is None and body.score is None:
        raise HTTPException(422, detail="feedback needs pass_fail and/or score (1-5); nothing was written")
    feedback = FeedbackMessage(tenant=tenant, **body.model_dump())
    try:
        async with pool.connection(timeout=5) as conn, conn.transaction():
            status = await record_feedback(conn, feedback, settings.feedback_pass_score)
    except UnknownRequest as exc:
        raise HTTPException(404, detail=f"{exc}; nothing was written") from None
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise HTTPException(503, detail=f"database unavailable, feedback not recorded: {exc}") from exc
    return FeedbackOut(request_id=feedback.request_id, source=feedback.source, status=status,
                       passed=feedback_passes(feedback, settings.feedback_pass_score))
