from fastapi import APIRouter

from ingest.api.routes import feedback, generate, health, models, openai_chat, prompts, requests

api_router = APIRouter()
api_router.include_router(generate.router)
api_router.include_router(prompts.router)
api_router.include_router(requests.router)
api_router.include_router(health.router)
api_router.include_router(feedback.router)
api_router.include_router(openai_chat.router)
api_router.include_router(models.router)
