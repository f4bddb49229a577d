from fastapi import APIRouter

from ingest.api.routes import feedback, generate, health, prompts, requests

api_router = APIRouter()
api_router.include_router(generate.router)
api_router.include_router(prompts.router)
api_router.include_router(requests.router)
api_router.include_router(health.router)
api_router.include_router(feedback.router)
