"""The API's error answers.

Routes answer ``{"detail": "...", "code": "..."}`` (validation errors add ``message`` and field errors); routes
under ``/v1/`` answer in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}`` (plus ``detail``),
so that OpenAI clients read them.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

OPENAI_PREFIX = "/v1/"

# OpenAI's error ``type`` for each status this API answers with.
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
                 422: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}


class ApiError(HTTPException):
    """An error with a machine-readable ``code`` (``budget_exceeded``, ``pii_detected``...)."""

    def __init__(self, status_code: int, detail: str, code: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code, detail=detail, headers=headers)
        self.code = code
        self.param = param


class ErrorOut(BaseModel):
    detail: str
    code: str | None = None


def openai_error_body(message: str, status_code: int, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _OPENAI_TYPES.get(status_code, "api_error"), "param": param,
                      "code": code}}


def error_response(request: Request, status_code: int, detail: str, code: str | None = None,
                   param: str | None = None, headers: dict[str, str] | None = None,
                   extra: dict[str, Any] | None = None) -> JSONResponse:
    if request.url.path.startswith(OPENAI_PREFIX):
        # OpenAI clients read ``error``; ``detail`` stays for clients of this API's own shape.
        content: dict[str, Any] = {**openai_error_body(detail, status_code, code, param), "detail": detail}
    else:
        content = {"detail": detail, "code": code, **(extra or {})}
    return JSONResponse(status_code=status_code, content=content, headers=headers)


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(request, exc.status_code, detail, getattr(exc, "code", None), getattr(exc, "param", None),
                          headers=exc.headers)


# Documented on every authenticated route, so the OpenAPI schema (and its fuzzing) knows them.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing, unknown, revoked or expired API key"},
    413: {"model": ErrorOut, "description": "body, prompt or metadata over its limit"},
    503: {"model": ErrorOut, "description": "the database or the broker is unavailable"},
}
