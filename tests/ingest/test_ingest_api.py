"""The ingest API in-process against the real broker and database: validation happens before publishing."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from core.messages import CompletionMessage, PromptMessage, RoutingDecision, Tier, utcnow
from core.settings import Settings
from core.topics import TopicSpec, create_topics
from ingest.api.main import create_app
from sql.ledger import ledger_entry, write_heartbeat
from sql.repository import upsert_completion
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


def completion_for(prompt: PromptMessage) -> CompletionMessage:
    decision = RoutingDecision(label="simple", confidence=0.9, probabilities={"simple": 0.9}, model="phi-3-mini",
                               tier=Tier.cheap, reasons=["test"], policy="threshold", classifier="heuristic")
    return CompletionMessage(request_id=prompt.request_id, prompt=prompt, decision=decision, attempts=[], status="ok",
                             final_model="phi-3-mini", response="four", finish_reason="stop", input_tokens=3,
                             output_tokens=1, cost_micro_usd=1, completed_at=utcnow())


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
    assert (await client.get("/healthz")).status_code == 200  # liveness
    ready = await client.get("/readyz")
    # Broker and database answer, but no worker holds the pipeline's partitions: not ready.
    assert ready.status_code == 503, ready.text
    assert ready.json()["broker"] == "ok" and ready.json()["database"] == "ok" and ready.json()["workers"] == "missing"
    assert (await client.get(f"/requests/{uuid.uuid4().hex}")).status_code == 404
    assert (await client.get("/requests/abc%00def")).status_code == 404  # a NUL is no request id, and no 500


async def test_readyz_when_heartbeats_hold_every_partition(api):
    client, settings = api
    from core.registry import ModelRegistry
    from core.topics import pipeline_topics

    topics = {t.name: list(range(t.partitions)) for t in pipeline_topics(
        settings, ModelRegistry.from_yaml(settings.models_config)) if t.name != settings.topic_dead_letter}
    async with await psycopg.AsyncConnection.connect(settings.pg_dsn, autocommit=True) as conn:
        await write_heartbeat(conn, worker_id=f"w-{uuid.uuid4().hex[:6]}", app_id=settings.faust_app_id, host="h",
                              pid=1, started_at=utcnow(), assignment=topics)
        deadline = time.monotonic() + 60  # the PII scanner loads in the background first (seconds)
        ready = await client.get("/readyz")
        while ready.status_code != 200 and ready.json().get("pii_scanner") == "loading" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["pii_scanner"] == "ok"
        # While a scanner is loading the process takes no traffic: the import holds the GIL for seconds.
        gatekeeper = client._transport.app.state.gatekeeper
        gatekeeper.pii_state = "loading"
        loading = await client.get("/readyz")
        gatekeeper.pii_state = "ok"
        assert loading.status_code == 503 and loading.json()["pii_scanner"] == "loading", loading.text
        await conn.execute("UPDATE worker_heartbeats SET beat_at = now() - interval '1 hour'")
    stale = await client.get("/readyz")
    assert stale.status_code == 503 and stale.json()["unassigned_partitions"][settings.topic_prompts] == [0, 1, 2, 3, 4, 5]


async def test_accepted_prompt_has_a_pending_ledger_row_and_get_says_pending(api):
    client, settings = api
    response = await client.post("/prompts", json={"prompt": "Hello ledger"})
    assert response.status_code == 202
    request_id = response.json()["request_id"]
    async with await psycopg.AsyncConnection.connect(settings.pg_dsn) as conn:
        entry = await ledger_entry(conn, request_id)
    assert entry["state"] == "pending" and entry["republished"] == 0
    assert (entry["deadline_at"] - entry["accepted_at"]).total_seconds() == pytest.approx(
        settings.request_deadline_s, abs=5)
    pending = await client.get(f"/requests/{request_id}")
    assert pending.status_code == 202 and pending.json()["status"] == "pending"
    [message] = [m for m in await published(settings) if m.request_id == request_id]
    assert message.deadline_at is not None


async def test_get_waits_for_an_accepted_requests_row_and_then_answers_it(api):
    """/generate answers before the sink has written the row: a GET right after long-polls for it."""
    client, settings = api
    response = await client.post("/prompts", json={"prompt": "Hello wait"})
    request_id = response.json()["request_id"]
    [message] = [m for m in await published(settings) if m.request_id == request_id]
    at_once = await client.get(f"/requests/{request_id}", params={"wait_s": 0})
    assert at_once.status_code == 202

    async def sink_writes_it_later() -> None:
        await asyncio.sleep(0.3)
        async with await psycopg.AsyncConnection.connect(settings.pg_dsn) as conn:
            await upsert_completion(conn, completion_for(message))
            await conn.commit()

    started = time.monotonic()
    waited, _ = await asyncio.gather(client.get(f"/requests/{request_id}", params={"wait_s": 5}),
                                     sink_writes_it_later())
    assert waited.status_code == 200, waited.text
    assert waited.json()["response"] == "four" and 0.3 <= time.monotonic() - started < 4
    out_of_range = await client.get(f"/requests/{request_id}", params={"wait_s": 31})
    assert out_of_range.status_code == 422


async def test_metrics_endpoint_counts_requests(api):
    client, _settings = api
    await client.post("/prompts", json={"prompt": ""})
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert 'http_requests_total{handler="/prompts",method="POST",status="4xx"}' in metrics.text


async def test_readyz_reports_a_database_that_is_down_and_nothing_is_accepted(tansu_bootstrap):
    settings = Settings(_env_file=None).model_copy(update={
        "kafka_bootstrap": tansu_bootstrap, "topic_replies_prefix": f"replies-down-{uuid.uuid4().hex[:6]}.",
        "pg_dsn": "postgresql://router@127.0.0.1:1/router?connect_timeout=1"})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            assert (await client.get("/healthz")).status_code == 200  # alive, but ...
            health = await client.get("/readyz")
            assert health.status_code == 503  # ... not ready
            assert health.json()["broker"] == "ok" and health.json()["database"].startswith("down")
            # A key cannot be checked without the database: 503, not 401.
            response = await client.get("/requests/anything", headers={"x-api-key": "rk-0123456789ab-secret"})
            assert response.status_code == 503 and response.json()["code"] == "database_unavailable"
            # Nothing can be accepted (no key check, no ledger row): 503 with Retry-After, never a 202 that
            # nothing records.
            refused = await client.post("/prompts", json={"prompt": "hello"},
                                        headers={"x-api-key": "rk-0123456789ab-secret"})
            assert refused.status_code == 503 and refused.headers["retry-after"]
