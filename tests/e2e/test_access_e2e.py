"""Who may spend, end to end with two API processes: keys, tenant isolation, a hard budget under 32 concurrent
requests, a rate limit shared by both processes, PII modes, ``store_prompts: false``, producers held to the
API's limits, and no secret in any log, row or dead letter."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from core.messages import PromptMessage
from tests.e2e.test_pipeline_e2e import produce, read_dead_letters, unique

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def second_api(pipeline):
    api, url = pipeline.start_api("api-2")
    yield url
    api.stop()


@pytest.fixture(scope="module")
def issued_keys() -> list[str]:
    """Every key made in this module, for the final grep of logs and rows."""
    return []


def make_key(pipeline, issued: list[str], tenant: str, *options: str) -> str:
    key = pipeline.create_key("--tenant", tenant, *options)
    issued.append(key)
    return key


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def published_prompts(pipeline) -> list[str]:
    """Every prompt on the prompts topic so far (all partitions, from offset 0)."""
    settings = pipeline.settings
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(settings.topic_prompts, p) for p in range(settings.prompts_partitions)]
        consumer.assign(partitions)
        for partition in partitions:
            consumer.seek(partition, 0)
        texts, idle = [], 0
        while idle < 2:
            batches = await consumer.getmany(timeout_ms=700)
            idle = 0 if batches else idle + 1
            texts += [r.value.decode(errors="replace") for records in batches.values() for r in records]
        return texts
    finally:
        await consumer.stop()


def db_text(dsn: str, where_tenant: str) -> str:
    """Every stored value of a tenant's requests, their attempts and ledger rows, as one text."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT r::text, coalesce(string_agg(a::text, ' '), '') FROM requests r"
                            " LEFT JOIN request_attempts a USING (request_id) WHERE r.tenant = %s GROUP BY r",
                            (where_tenant,)).fetchall()
        ledger = conn.execute("SELECT l::text FROM request_ledger l WHERE tenant = %s", (where_tenant,)).fetchall()
    return " ".join(" ".join(row) for row in rows + ledger)


async def test_bad_keys_get_401_on_both_processes_and_nothing_is_published(pipeline, second_api, issued_keys):
    good = make_key(pipeline, issued_keys, "e2e-auth")
    revoked = make_key(pipeline, issued_keys, "e2e-auth")
    pipeline.keys_cli("revoke", revoked.split("-")[1])
    expired = make_key(pipeline, issued_keys, "e2e-auth", "--expires-in-days", "0.000001")
    marker = uuid.uuid4().hex
    cases = {"missing": {}, "wrong": auth(good[:-4] + "AAAA"), "revoked": auth(revoked), "expired": auth(expired),
             "garbage": {"x-api-key": "sk-not-ours"}}
    async with httpx.AsyncClient(timeout=30) as client:
        for url in (pipeline.api_url, second_api):
            for case, headers in cases.items():
                for path in ("/prompts", "/generate"):
                    response = await client.post(f"{url}{path}", headers=headers, json={"prompt": f"bad {marker}"})
                    assert response.status_code == 401, (case, url, response.text)
                    assert response.json()["code"] == "invalid_api_key"
        accepted = await client.post(f"{second_api}/prompts", headers={"x-api-key": good},
                                     json={"prompt": f"good {marker}"})
        assert accepted.status_code == 202
    texts = await published_prompts(pipeline)
    assert not any(f"bad {marker}" in text for text in texts)
    assert any(f"good {marker}" in text for text in texts)


async def test_a_tenant_cannot_read_another_tenants_request(pipeline, second_api, issued_keys):
    key_a = make_key(pipeline, issued_keys, "e2e-a")
    key_b = make_key(pipeline, issued_keys, "e2e-b")
    async with httpx.AsyncClient(timeout=60) as client:
        answer = await client.post(f"{pipeline.api_url}/generate", headers=auth(key_a),
                                   json={"prompt": unique("Name a prime number.")})
        assert answer.status_code == 200, answer.text
        request_id = answer.json()["request_id"]
        await pipeline.wait_for_row(request_id)
        for url in (pipeline.api_url, second_api):
            assert (await client.get(f"{url}/requests/{request_id}", headers=auth(key_a))).status_code == 200
            foreign = await client.get(f"{url}/requests/{request_id}", headers=auth(key_b))
            assert foreign.status_code == 404 and foreign.json()["code"] == "not_found"
        clash = await client.post(f"{second_api}/prompts", headers=auth(key_b),
                                  json={"prompt": "overwrite", "request_id": request_id})
        assert clash.status_code == 409
    assert pipeline.row(request_id)["tenant"] == "e2e-a"


async def test_hard_budget_holds_under_32_concurrent_requests_across_two_processes(pipeline, second_api,
                                                                                 issued_keys):
    # A budget of three worst cases: holds make the 4th concurrent request wait for none and get 429.
    key = make_key(pipeline, issued_keys, "e2e-budget")
    prompt = unique("What is the capital of Italy?")
    async with httpx.AsyncClient(timeout=60) as client:
        probe = await client.post(f"{pipeline.api_url}/prompts", headers=auth(key),
                                  json={"prompt": prompt, "max_tokens": 64})
        worst_usd = float(probe.headers["x-request-hold-usd"].lstrip("$"))
        await pipeline.wait_for_row(probe.json()["request_id"])
        pipeline.keys_cli("tenant", "e2e-budget-hard", "--hard-usd", f"{worst_usd * 3.5:.6f}")
        budget_key = make_key(pipeline, issued_keys, "e2e-budget-hard")
        urls = [pipeline.api_url, second_api]
        answers = await asyncio.gather(*(
            client.post(f"{urls[n % 2]}/generate", headers=auth(budget_key), json={"prompt": prompt, "max_tokens": 64})
            for n in range(32)))
    codes = [a.status_code for a in answers]
    refused = [a for a in answers if a.status_code == 429]
    assert all(a.json()["code"] == "budget_exceeded" for a in refused), [a.text for a in refused][:3]
    assert codes.count(200) >= 3 and refused and codes.count(200) + len(refused) == 32, codes
    for answer in answers:
        if answer.status_code == 200:
            await pipeline.wait_for_row(answer.json()["request_id"])
    with psycopg.connect(pipeline.dsn) as conn:
        spent = conn.execute("SELECT coalesce(sum(cost_micro_usd), 0) FROM requests WHERE tenant = 'e2e-budget-hard'"
                             ).fetchone()[0]
        counter = conn.execute("SELECT spent_micro_usd, reserved_micro_usd FROM budget_usage"
                               " WHERE scope = 'tenant' AND scope_id = 'e2e-budget-hard'").fetchone()
    hard = worst_usd * 3.5 * 1e6
    assert spent <= hard + worst_usd * 1e6
    for _ in range(50):  # the sink settles each hold right after writing the row
        if counter == (spent, 0):
            break
        await asyncio.sleep(0.2)
        with psycopg.connect(pipeline.dsn) as conn:
            counter = conn.execute("SELECT spent_micro_usd, reserved_micro_usd FROM budget_usage"
                                   " WHERE scope = 'tenant' AND scope_id = 'e2e-budget-hard'").fetchone()
    assert counter == (spent, 0)  # every hold settled to the real cost


async def test_rate_limit_holds_across_both_processes(pipeline, second_api, issued_keys):
    key = make_key(pipeline, issued_keys, "e2e-rate", "--rpm", "4")
    urls = [pipeline.api_url, second_api]
    # One-minute windows: start early in a minute so that all eight requests fall in the same one.
    while time.time() % 60 > 40:
        await asyncio.sleep(1)
    async with httpx.AsyncClient(timeout=30) as client:
        answers = [await client.post(f"{urls[n % 2]}/prompts", headers=auth(key), json={"prompt": f"hi {n}"})
                   for n in range(8)]
    assert [a.status_code for a in answers] == [202] * 4 + [429] * 4, [a.text for a in answers]
    assert answers[3].headers["x-ratelimit-remaining-requests"] == "0"
    limited = answers[4:]
    assert all(a.json()["code"] == "rate_limit_exceeded" and int(a.headers["Retry-After"]) >= 1 for a in limited)
    # Refused by both processes: the count is shared, not per process.
    assert {a.request.url.port for a in limited} == {int(u.rsplit(":", 1)[1]) for u in urls}


async def test_pii_modes_and_store_prompts_false(pipeline, second_api, issued_keys):
    email = f"jane.{uuid.uuid4().hex[:6]}@example.com"
    prompts = {"email": f"Write to {email} today", "phone": "Call +1 415-555-0123 now",
               "card": "Charge 4111 1111 1111 1111", "iban": "Pay GB82 WEST 1234 5698 7654 32"}
    for tenant, mode in (("e2e-pii-refuse", "refuse"), ("e2e-pii-redact", "redact"),
                         ("e2e-pii-stored", "redact-stored")):
        pipeline.keys_cli("tenant", tenant, "--pii-mode", mode)
    pipeline.keys_cli("tenant", "e2e-nostore", "--store-prompts", "false")
    keys = {tenant: make_key(pipeline, issued_keys, tenant)
            for tenant in ("e2e-pii-refuse", "e2e-pii-redact", "e2e-pii-stored", "e2e-nostore")}
    # Generous: the first PII check of a process loads Presidio and spaCy's tokenizer.
    async with httpx.AsyncClient(timeout=200) as client:
        for text in prompts.values():
            refused = await client.post(f"{second_api}/generate", headers=auth(keys["e2e-pii-refuse"]),
                                        json={"prompt": text})
            assert refused.status_code == 400 and refused.json()["code"] == "pii_detected"
        redacted = await client.post(f"{pipeline.api_url}/generate", headers=auth(keys["e2e-pii-redact"]),
                                     json={"prompt": prompts["email"]})
        stored = await client.post(f"{pipeline.api_url}/generate", headers=auth(keys["e2e-pii-stored"]),
                                   json={"prompt": prompts["card"] + " or " + email})
        secret = unique(f"nothing kept {uuid.uuid4().hex}")
        nostore = await client.post(f"{second_api}/generate", headers=auth(keys["e2e-nostore"]),
                                    json={"prompt": secret, "metadata": {"note": secret}})
    assert redacted.status_code == stored.status_code == nostore.status_code == 200
    calls = pipeline.stub_calls()
    # redact: the model never sees the address; redact-stored: it does, the database does not.
    assert any("Write to <EMAIL_ADDRESS> today" in c["prompt"] for c in calls)
    assert not any(f"Write to {email}" in c["prompt"] for c in calls)
    assert any("4111 1111 1111 1111" in c["prompt"] for c in calls)
    row = await pipeline.wait_for_row(stored.json()["request_id"], timeout_s=200)
    assert row["prompt"] == "Charge <CREDIT_CARD> or <EMAIL_ADDRESS>" and email not in (row["response"] or "")
    assert "4111" not in db_text(pipeline.dsn, "e2e-pii-stored")
    row = await pipeline.wait_for_row(nostore.json()["request_id"])
    assert row["prompt"] == "" and row["response"] is None and row["metadata"] == {}
    assert row["prompt_chars"] == len(secret) and row["tokens_in"] > 0 and row["cost_micro_usd"] > 0
    assert "nothing kept" not in db_text(pipeline.dsn, "e2e-nostore")


async def test_producer_messages_breaking_the_limits_and_foreign_reply_to_are_dead_lettered(pipeline):
    settings = pipeline.settings
    too_long = PromptMessage(prompt="x" * (settings.max_prompt_chars + 1))
    big_metadata = PromptMessage(prompt="hi", metadata={"blob": "y" * 5_000})
    foreign = PromptMessage(prompt=unique("Hello"), reply_to="__consumer_offsets")
    good = PromptMessage(prompt=unique("Say ok."), reply_to=None)
    await produce(settings.kafka_bootstrap, settings.topic_prompts,
                  [(m.request_id.encode(), m.to_bytes()) for m in (too_long, big_metadata, foreign, good)])
    wanted = {too_long.request_id, big_metadata.request_id, foreign.request_id}
    letters = await read_dead_letters(settings.kafka_bootstrap, settings.topic_dead_letter,
                                      until=lambda got: wanted <= {g.key for g in got})
    by_key = {letter.key: letter for letter in letters if letter.key in wanted}
    assert set(by_key) == wanted
    assert "the limit is" in by_key[too_long.request_id].error and by_key[too_long.request_id].stage == "classify"
    assert "metadata" in by_key[big_metadata.request_id].error
    assert "reply_to" in by_key[foreign.request_id].error
    assert (await pipeline.wait_for_row(good.request_id))["status"] == "ok"
    for message in (too_long, big_metadata, foreign):
        assert pipeline.row(message.request_id) is None


async def test_no_secret_in_logs_rows_or_dead_letters(pipeline, second_api, issued_keys):
    """Last in this module: greps everything the run wrote for the router keys, the pepper and the provider key."""
    async with httpx.AsyncClient(timeout=30) as client:  # a failing call with a key: its error must not echo it
        await client.post(f"{second_api}/prompts", headers={"x-api-key": issued_keys[0] + "x"}, json={"prompt": "hi"})
    secrets = [*issued_keys, pipeline.api_key, pipeline.env["ROUTER_API_KEY_PEPPER"],
               pipeline.env["ROUTER_STUB_API_KEY"]]
    assert len(secrets) >= 10
    logs = {path.name: path.read_text(errors="replace") for path in pipeline.log_dir.rglob("*.log")}
    assert {"api.log", "worker.log", "api-2.log"} <= set(logs)
    with psycopg.connect(pipeline.dsn) as conn:
        tables = [name for (name,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
        stored = " ".join(str(row) for table in tables
                          for row in conn.execute(f'SELECT t::text FROM "{table}" t').fetchall())
    letters = await read_dead_letters(pipeline.settings.kafka_bootstrap, pipeline.settings.topic_dead_letter,
                                      until=lambda got: False, timeout_s=3)
    dead = " ".join(letter.model_dump_json() for letter in letters)
    for secret in secrets:
        # A router key's public id may be shown (listings, errors): its secret part never.
        secret_part = secret.split("-", 2)[2] if secret.startswith("rk-") else secret
        for name, text in logs.items():
            assert secret_part not in text, f"a secret is in {name}"
        assert secret_part not in stored and secret_part not in dead
