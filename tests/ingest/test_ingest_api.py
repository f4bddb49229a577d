"""The ingest API in-process against the real broker and database: validation happens before publishing."""

from __future__ import annotations

import uuid

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from core.messages import PromptMessage
from core.settings import Settings
from core.topics import TopicSpec, create_topics
from ingest.api.main import create_app
from tests.keys import new_key


@pytest.fixture()
async def api(tansu_bootstrap, pg_dsn):
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(_env_file=None).model_copy(update={
        "kafka_bootstrap": tansu_bootstrap, "pg_dsn": pg_dsn, "topic_prompts": f"prompts-api-{suffix}",
        "topic_replies_prefix": f"replies-api-{suffix}.", "max_prompt_chars": 50})
    await create_topics(tansu_bootstrap, [TopicSpec(settings.topic_prompts, 1)])
    key, _ = await new_key(pg_dsn, f"acme-{suffix}")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            yield client, settings


async def published(settings: Settings) -> list[PromptMessage]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None)
    await consumer.start()
    try:
        partition = TopicPartition(settings.topic_prompts, 0)
        consumer.assign([partition])
        consumer.seek(partition, 0)
        batches = await consumer.getmany(timeout_ms=1500)
        return [PromptMessage.from_bytes(r.value) for records in batches.values() for r in records]
    finally:
        await consumer.stop()


@pytest.mark.parametrize(("body", "expected"), [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   \n "}, "must not be empty"),
    ({}, "prompt: Field required"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "hi", "colour": "blue"}, "colour"),
    ({"prompt": "hi", "request_id": "has spaces"}, "request_id"),
])
async def test_invalid_bodies_get_422_and_nothing_is_published(api, body, expected):
    client, settings = api
    for path in ("/prompts", "/generate"):
        response = await client.post(path, json=body)
        assert response.status_code == 422, response.text
        assert expected in response.json()["message"]
    assert await published(settings) == []


async def test_malformed_json_gets_422(api):
    client, settings = api
    response = await client.post("/prompts", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "JSON" in response.json()["message"]
    assert await published(settings) == []


async def test_valid_prompt_is_published_keyed_by_request_id_with_the_keys_tenant(api):
    client, settings = api
    response = await client.post("/prompts", json={"prompt": "Hello there"})
    assert response.status_code == 202
    request_id = response.json()["request_id"]
    assert response.json()["status_url"] == f"/requests/{request_id}"
    messages = await published(settings)
    assert [(m.request_id, m.prompt, m.tenant.split("-")[0], m.max_tokens, m.reply_to, m.key_id is not None)
            for m in messages] == [(request_id, "Hello there", "acme", settings.default_max_tokens, None, True)]


async def test_healthz_and_missing_request(api):
    client, _settings = api
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["broker"] == "ok" and health.json()["database"] == "ok"
    assert (await client.get(f"/requests/{uuid.uuid4().hex}")).status_code == 404


async def test_healthz_reports_a_database_that_is_down(tansu_bootstrap):
    settings = Settings(_env_file=None).model_copy(update={
        "kafka_bootstrap": tansu_bootstrap, "topic_replies_prefix": f"replies-down-{uuid.uuid4().hex[:6]}.",
        "pg_dsn": "postgresql://router@127.0.0.1:1/router?connect_timeout=1"})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            health = await client.get("/healthz")
            assert health.status_code == 503
            assert health.json()["broker"] == "ok" and health.json()["database"].startswith("down")
            # A key cannot be checked without the database: 503, not 401.
            response = await client.get("/requests/anything", headers={"x-api-key": "rk-0123456789ab-secret"})
            assert response.status_code == 503 and response.json()["code"] == "database_unavailable"
