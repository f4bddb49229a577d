from fastapi import APIRouter, Depends

from ingest.api.deps import require_key
from ingest.api.errors import AUTH_RESPONSES
from ingest.api.routes import feedback, generate, health, models, openai_chat, prompts, requests

# Every route but health needs an API key: routers added to ``authenticated`` get the check with them.
authenticated = APIRouter(dependencies=[Depends(require_key)], responses=AUTH_RESPONSES)
authenticated.include_router(generate.router)
authenticated.include_router(prompts.router)
authenticated.include_router(requests.router)
authenticated.include_router(feedback.router)
authenticated.include_router(openai_chat.router)
authenticated.include_router(models.router)

api_router = APIRouter()
api_router.include_router(authenticated)
api_router.include_router(health.router)
