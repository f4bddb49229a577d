"""Keys, tenants, limits, rate limits, budgets and guardrails on the API in-process, against the real broker
and database: every refusal is in the API's error shape and publishes nothing."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from psycopg import AsyncConnection
from pydantic import SecretStr

from core.messages import PromptMessage
from core.settings import Settings
from core.topics import TopicSpec, create_topics
from ingest.api.main import create_app
from sql.keys import admit_request_or_refuse, revoke_key
from sql.repository import upsert_completion
from tests.ingest.test_ingest_api import published
from tests.keys import new_key, set_tenant

PEPPER = "test-pepper"


@pytest.fixture()
async def app_settings(tansu_bootstrap, pg_dsn):
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(_env_file=None).model_copy(update={
        "kafka_bootstrap": tansu_bootstrap, "pg_dsn": pg_dsn, "topic_prompts": f"prompts-acc-{suffix}",
        "topic_replies_prefix": f"replies-acc-{suffix}.", "max_body_bytes": 200_000, "max_prompt_chars": 5_000,
        "max_metadata_chars": 500, "max_metadata_items": 4, "api_key_pepper": SecretStr(PEPPER)})
    await create_topics(tansu_bootstrap, [TopicSpec(settings.topic_prompts, 1)])
    return settings


@pytest.fixture()
async def client(app_settings):
    app = create_app(app_settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
            yield http


def tenant_name() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_every_bad_key_gets_401_and_nothing_is_published(client, app_settings, pg_dsn):
    good, _ = await new_key(pg_dsn, tenant_name(), PEPPER)
    revoked, revoked_key = await new_key(pg_dsn, tenant_name(), PEPPER)
    async with await AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        assert await revoke_key(conn, revoked_key.key_id)
    expired, _ = await new_key(pg_dsn, tenant_name(), PEPPER, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    other_pepper, _ = await new_key(pg_dsn, tenant_name(), "another-pepper")
    wrong_secret = good[: good.rindex("-") + 1] + "x" * 43
    cases = {"missing": {}, "not a key": bearer("hello"), "wrong secret": bearer(wrong_secret),
             "revoked": bearer(revoked), "expired": bearer(expired), "hashed with another pepper": bearer(other_pepper),
             "empty x-api-key": {"x-api-key": ""}, "basic auth": {"Authorization": "Basic dXNlcjpwYXNz"}}
    for case, headers in cases.items():
        for method, path in (("POST", "/prompts"), ("POST", "/generate"), ("GET", f"/requests/{uuid.uuid4().hex}")):
            response = await client.request(method, path, headers=headers, json={"prompt": "hello"})
            assert response.status_code == 401, (case, path, response.text)
            body = response.json()
            assert body["code"] == "invalid_api_key" and body["detail"], (case, body)
            assert good not in response.text and revoked not in response.text
    assert await published(app_settings) == []
    ok = await client.post("/prompts", headers={"x-api-key": good}, json={"prompt": "hello"})
    assert ok.status_code == 202, ok.text
    assert len(await published(app_settings)) == 1
    assert (await client.get("/healthz")).status_code == 200  # health needs no key


async def test_tenant_comes_from_the_key(client, app_settings, pg_dsn):
    key, stored = await new_key(pg_dsn, tenant_name(), PEPPER)
    admin, _ = await new_key(pg_dsn, tenant_name(), PEPPER, role="admin")
    refused = await client.post("/prompts", headers=bearer(key), json={"prompt": "hi", "tenant": "someone-else"})
    assert refused.status_code == 403 and refused.json()["code"] == "tenant_mismatch"
    same = await client.post("/prompts", headers=bearer(key), json={"prompt": "hi", "tenant": stored.tenant})
    assert same.status_code == 202
    on_behalf = await client.post("/prompts", headers=bearer(admin), json={"prompt": "hi", "tenant": "acme-admin"})
    assert on_behalf.status_code == 202
    assert [m.tenant for m in await published(app_settings)] == [stored.tenant, "acme-admin"]


def completion_for(request_id: str, tenant: str):
    from core.messages import CompletionMessage
    from tests.e2e.test_pipeline_e2e import completion_payload

    completion = CompletionMessage.from_bytes(completion_payload(request_id))
    return completion.model_copy(update={"prompt": completion.prompt.model_copy(update={"tenant": tenant})})


async def test_a_tenant_reads_only_its_own_requests_and_ids_are_not_shared(client, app_settings, pg_dsn):
    key_a, a = await new_key(pg_dsn, tenant_name(), PEPPER)
    key_b, b = await new_key(pg_dsn, tenant_name(), PEPPER)
    admin, _ = await new_key(pg_dsn, tenant_name(), PEPPER, role="admin")
    request_id = f"shared-{uuid.uuid4().hex[:8]}"
    first = await client.post("/prompts", headers=bearer(key_a), json={"prompt": "mine", "request_id": request_id})
    assert first.status_code == 202
    # Another tenant sending the same id is refused, not merged.
    clash = await client.post("/prompts", headers=bearer(key_b), json={"prompt": "theirs", "request_id": request_id})
    assert clash.status_code == 409 and clash.json()["code"] == "request_id_conflict"
    # The owner retrying the same id is idempotent: accepted, not sent to the models twice.
    retry = await client.post("/prompts", headers=bearer(key_a), json={"prompt": "mine", "request_id": request_id})
    assert retry.status_code == 202 and retry.json()["request_id"] == request_id
    assert [m.prompt for m in await published(app_settings)] == ["mine"]

    async with await AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        assert await upsert_completion(conn, completion_for(request_id, a.tenant))
        # A producer that sends another tenant's id cannot overwrite that tenant's row either.
        assert not await upsert_completion(conn, completion_for(request_id, b.tenant))
    assert (await client.get(f"/requests/{request_id}", headers=bearer(key_a))).json()["tenant"] == a.tenant
    foreign = await client.get(f"/requests/{request_id}", headers=bearer(key_b))
    missing = await client.get(f"/requests/{uuid.uuid4().hex}", headers=bearer(key_b))
    assert foreign.status_code == missing.status_code == 404  # reads exactly like a missing request
    assert (await client.get(f"/requests/{request_id}", headers=bearer(admin))).status_code == 200


async def test_oversized_body_prompt_and_metadata_get_413_and_nothing_is_published(client, app_settings, pg_dsn):
    key, _ = await new_key(pg_dsn, tenant_name(), PEPPER)
    headers = bearer(key)
    big_body = b'{"prompt": "' + b"x" * 300_000 + b'"}'
    response = await client.post("/prompts", headers={**headers, "content-type": "application/json"}, content=big_body)
    assert response.status_code == 413 and response.json()["code"] == "body_too_large"

    async def chunks():  # no Content-Length: counted as it streams in
        for _ in range(40):
            yield b"x" * 10_000

    response = await client.post("/generate", headers={**headers, "content-type": "application/json"},
                                 content=chunks())
    assert response.status_code == 413 and response.json()["code"] == "body_too_large"
    response = await client.post("/prompts", headers=headers, json={"prompt": "x" * 5_001})
    assert response.status_code == 413 and response.json()["code"] == "prompt_too_long"
    assert "the limit is 5000" in response.json()["detail"]
    for metadata in ({"k": "v" * 2_000}, {str(n): "v" for n in range(5)}, {"k" * 100: "v"}):
        response = await client.post("/prompts", headers=headers, json={"prompt": "hi", "metadata": metadata})
        assert response.status_code == 413 and response.json()["code"] == "metadata_too_large", response.text
    assert await published(app_settings) == []


async def test_rate_limit_answers_429_with_retry_after_and_headers(client, app_settings, pg_dsn):
    key, _ = await new_key(pg_dsn, tenant_name(), PEPPER, requests_per_min=3, tokens_per_min=100_000)
    while time.time() % 60 > 40:  # one-minute windows: keep the four requests inside one
        await asyncio.sleep(1)
    answers = [await client.post("/prompts", headers=bearer(key), json={"prompt": f"hi {n}", "max_tokens": 10})
               for n in range(4)]
    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "3"
    assert answers[2].headers["x-ratelimit-remaining-requests"] == "0"
    limited = answers[3]
    assert limited.json()["code"] == "rate_limit_exceeded" and 1 <= int(limited.headers["Retry-After"]) <= 60
    assert len(await published(app_settings)) == 3
    huge, _ = await new_key(pg_dsn, tenant_name(), PEPPER, tokens_per_min=50)
    response = await client.post("/prompts", headers=bearer(huge), json={"prompt": "hi", "max_tokens": 100})
    assert response.status_code == 429 and "more than the key's limit" in response.json()["detail"]


async def test_concurrent_requests_cannot_overshoot_a_hard_budget(client, app_settings, pg_dsn):
    app = create_app(app_settings)
    async with app.router.lifespan_context(app):
        gatekeeper = app.state.gatekeeper
        prompt = "What is the capital of France?"
        worst = gatekeeper.worst_case_micro_usd(gatekeeper.input_tokens(prompt), 64)
    tenant = tenant_name()
    await set_tenant(pg_dsn, tenant, budget_hard_micro_usd=int(worst * 5.5), budget_soft_micro_usd=worst * 2)
    key, _ = await new_key(pg_dsn, tenant, PEPPER)
    answers = await asyncio.gather(*(client.post("/prompts", headers=bearer(key),
                                                 json={"prompt": prompt, "max_tokens": 64}) for _ in range(32)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [202] * 5 + [429] * 27, codes
    refused = [a for a in answers if a.status_code == 429]
    assert all(a.json()["code"] == "budget_exceeded" for a in refused)
    assert any("x-budget-warning" in a.headers for a in answers if a.status_code == 202)
    assert len(await published(app_settings)) == 5


@pytest.mark.parametrize("mode", ["refuse", "redact", "redact-stored", "off"])
async def test_pii_modes(client, app_settings, pg_dsn, mode):
    tenant = tenant_name()
    await set_tenant(pg_dsn, tenant, pii_mode=mode)
    key, _ = await new_key(pg_dsn, tenant, PEPPER)
    prompts = ["Mail john.doe@example.com about it", "Call me on +1 415-555-0123 tomorrow",
               "My card is 4111 1111 1111 1111", "Pay to GB82 WEST 1234 5698 7654 32 please"]
    answers = [await client.post("/prompts", headers=bearer(key), json={"prompt": p}) for p in prompts]
    clean = await client.post("/prompts", headers=bearer(key), json={"prompt": "What is 2 + 2?"})
    assert clean.status_code == 202
    sent = await published(app_settings)
    if mode == "refuse":
        assert [a.status_code for a in answers] == [400] * 4
        kinds = [a.json()["detail"] for a in answers]
        for kind, answer in zip(["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE"], kinds, strict=True):
            assert kind in answer and "john.doe" not in answer
        assert [m.prompt for m in sent] == ["What is 2 + 2?"]
        return
    assert [a.status_code for a in answers] == [202] * 4
    if mode == "redact":
        assert [m.prompt for m in sent[:4]] == ["Mail <EMAIL_ADDRESS> about it", "Call me on <PHONE_NUMBER> tomorrow",
                                                "My card is <CREDIT_CARD>", "Pay to <IBAN_CODE> please"]
    else:
        assert [m.prompt for m in sent[:4]] == prompts  # the model sees the original
    assert {m.storage for m in sent} == {"redacted" if mode == "redact-stored" else "full"}


async def test_store_prompts_false_and_deny_list(client, app_settings, pg_dsn):
    tenant = tenant_name()
    await set_tenant(pg_dsn, tenant, store_prompts=False, deny_list=["forbidden word"])
    key, _ = await new_key(pg_dsn, tenant, PEPPER)
    denied = await client.post("/prompts", headers=bearer(key), json={"prompt": "say the Forbidden Word now"})
    assert denied.status_code == 400 and denied.json()["code"] == "denied_content"
    assert (await client.post("/prompts", headers=bearer(key), json={"prompt": "a forbidden wordsmith"})).status_code == 202
    assert [m.storage for m in await published(app_settings)] == ["none"]


def test_producer_messages_get_the_same_limits(app_settings):
    from routing.guardrails.limits import prompt_breaches

    ok = PromptMessage(prompt="hi", reply_to=f"{app_settings.topic_replies_prefix}host-12-abcdef12")
    assert prompt_breaches(ok, app_settings) == []
    foreign = PromptMessage(prompt="hi", reply_to="__consumer_offsets")
    assert [b.code for b in prompt_breaches(foreign, app_settings)] == ["invalid_reply_to"]
    big = PromptMessage(prompt="x" * 5_001, request_id="has space", metadata={"k": "v" * 600})
    assert [b.code for b in prompt_breaches(big, app_settings)] == ["prompt_too_long", "invalid_request_id",
                                                                    "metadata_too_large"]


async def test_holds_settle_to_real_cost_and_stale_holds_are_released(pg_dsn):
    from sql.keys import Settlement, TenantPolicy, admit_request, release_stale_holds, settle_requests

    tenant = tenant_name()
    await set_tenant(pg_dsn, tenant, budget_hard_micro_usd=1_000)
    _, key = await new_key(pg_dsn, tenant, PEPPER)
    policy = TenantPolicy(tenant, budget_hard_micro_usd=1_000)
    async with await AsyncConnection.connect(pg_dsn, autocommit=True) as conn:

        async def counter() -> tuple[int, int]:
            cursor = await conn.execute("SELECT spent_micro_usd, reserved_micro_usd FROM budget_usage"
                                        " WHERE scope = 'tenant' AND scope_id = %s", (tenant,))
            return await cursor.fetchone()

        assert (await admit_request(conn, request_id=f"{tenant}-1", key=key, tenant=policy,
                                    hold_micro_usd=600)).outcome == "accepted"
        refused = await admit_request_or_refuse(conn, request_id=f"{tenant}-2", key=key, tenant=policy,
                                                hold_micro_usd=600)
        assert refused.outcome == "over_budget" and refused.refused_by.scope == "tenant"
        assert await counter() == (0, 600)
        now = datetime.now(UTC)
        await settle_requests(conn, [Settlement(f"{tenant}-1", tenant, 50, now)])
        await settle_requests(conn, [Settlement(f"{tenant}-1", tenant, 50, now)])  # redelivered: counted once
        assert await counter() == (50, 0)
        assert (await admit_request(conn, request_id=f"{tenant}-2", key=key, tenant=policy,
                                    hold_micro_usd=600)).outcome == "accepted"
        await conn.execute("UPDATE request_ledger SET created_at = now() - interval '1 hour' WHERE request_id = %s",
                           (f"{tenant}-2",))
        assert await release_stale_holds(conn, 900) >= 1
        assert await counter() == (50, 0)
        await settle_requests(conn, [Settlement(f"{tenant}-2", tenant, 70, now)])  # a late completion still counts
        assert await counter() == (120, 0)


async def test_near_budget_asks_for_the_cheap_tier(tansu_bootstrap, app_settings, pg_dsn):
    settings = app_settings.model_copy(update={"budget_prefer_cheap_at": 0.5})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        gatekeeper = app.state.gatekeeper
        worst = gatekeeper.worst_case_micro_usd(gatekeeper.input_tokens("hi"), 16)
        tenant = tenant_name()
        await set_tenant(pg_dsn, tenant, budget_hard_micro_usd=worst * 3)
        key, _ = await new_key(pg_dsn, tenant, PEPPER)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
            answers = [await http.post("/prompts", headers=bearer(key), json={"prompt": "hi", "max_tokens": 16})
                       for _ in range(2)]
    assert [a.status_code for a in answers] == [202, 202]
    assert "x-budget-routing" not in answers[0].headers and "x-budget-routing" in answers[1].headers
    assert [m.max_tier for m in await published(settings)] == [None, "cheap"]


def test_capped_decision_moves_down_to_the_cheap_tier():
    import yaml

    from core.messages import RoutingDecision, Tier
    from core.registry import ModelRegistry
    from routing.router import capped
    from tests.e2e.conftest import MODELS_YAML

    registry = ModelRegistry.model_validate(yaml.safe_load(MODELS_YAML))
    decision = RoutingDecision(label="complex", confidence=0.9, probabilities={}, model="big", tier=Tier.expensive,
                               reasons=["hard"], policy="threshold", classifier="heuristic")
    assert capped(decision, PromptMessage(prompt="x"), registry) is decision
    cheap = capped(decision, PromptMessage(prompt="x", max_tier="cheap"), registry)
    assert (cheap.model, cheap.tier, cheap.reasons[-1]) == ("small", Tier.cheap,
                                                             "budget near: capped at the cheap tier (small)")
