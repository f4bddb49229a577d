"""End to end on real parts: Tansu, Postgres, a Faust worker process, the API process and the stub models
over HTTP with the real openai SDK."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from core.messages import DeadLetterMessage, PromptMessage
from stack.processes import spawn, wait_until

pytestmark = __import__("pytest").mark.timeout(240)


def unique(text: str) -> str:
    return f"{text} [{uuid.uuid4().hex[:8]}]"


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, key=key, value=value)
    finally:
        await producer.stop()


async def read_dead_letters(bootstrap: str, topic: str, until, timeout_s: float = 60) -> list[DeadLetterMessage]:
    """Read the dead-letter topic from offset 0 until ``until(letters)`` holds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    letters: list[DeadLetterMessage] = []
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek(partition, 0)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not until(letters):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                letters += [DeadLetterMessage.from_bytes(r.value) for r in records]
    finally:
        await consumer.stop()
    return letters


def completion_payload(request_id: str, input_tokens: int = 5) -> bytes:
    """A well-formed completion as a provider agent would publish it."""
    from core.messages import Attempt, CompletionMessage, RoutingDecision, Tier

    decision = RoutingDecision(label="simple", confidence=0.9, probabilities={"simple": 0.9, "medium": 0.1,
                                                                             "complex": 0.0},
                               model="small", tier=Tier.cheap, reasons=["test"], policy="threshold",
                               classifier="heuristic")
    return CompletionMessage(
        request_id=request_id, prompt=PromptMessage(request_id=request_id, prompt="Hi"), decision=decision,
        attempts=[Attempt(model="small", tier=Tier.cheap, status="ok", input_tokens=input_tokens, output_tokens=2)],
        status="ok", final_model="small", response="Hello", input_tokens=input_tokens, output_tokens=2,
    ).to_bytes()


def attempt_count(dsn: str, request_id: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM request_attempts WHERE request_id = %s",
                            (request_id,)).fetchone()[0]


async def test_generate_returns_routed_models_answer_and_records_one_row(pipeline):
    prompt = unique("What is the capital of France?")
    async with httpx.AsyncClient(timeout=60, headers=pipeline.auth_headers) as client:
        response = await client.post(f"{pipeline.api_url}/generate", json={"prompt": prompt, "max_tokens": 64})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "ok"
        assert body["model"] == body["routed_model"] == "small"  # a short lookup goes to the cheap model
        assert body["response"].startswith("[stub-small] answer:") and prompt in body["response"]
        assert body["decision_reason"] and body["difficulty"] == "simple"
        # Read-your-writes: the row is there as soon as /generate has answered, not only once the sink writes it.
        right_after = await client.get(f"{pipeline.api_url}/requests/{body['request_id']}")
        assert right_after.status_code == 200, right_after.text

        row = await pipeline.wait_for_row(body["request_id"], timeout_s=30)
        assert row["final_model"] == "small" and row["routed_model"] == "small" and row["status"] == "ok"
        assert row["tokens_in"] > 0 and row["tokens_out"] > 0
        assert row["cost_micro_usd"] == body["cost_micro_usd"] > 0
        assert row["counterfactual_model"] == "big" and row["counterfactual_cost_micro_usd"] > row["cost_micro_usd"]
        assert row["decision_reason"] == body["decision_reason"] and row["difficulty"] == "simple"
        assert row["classifier"] and row["policy"]
        assert attempt_count(pipeline.dsn, body["request_id"]) == 1

        fetched = await client.get(f"{pipeline.api_url}/requests/{body['request_id']}")
        assert fetched.status_code == 200
        assert fetched.json()["response"] == body["response"]
        assert len(fetched.json()["attempt_rows"]) == 1
        missing = await client.get(f"{pipeline.api_url}/requests/{uuid.uuid4().hex}")
        assert missing.status_code == 404


async def test_prompt_produced_straight_to_kafka_lands_in_postgres(pipeline):
    message = PromptMessage(prompt=unique("Name three primary colors."), tenant="acme", user="u-42",
                            metadata={"source": "producer-test"})
    await produce(pipeline.settings.kafka_bootstrap, pipeline.settings.topic_prompts,
                  [(message.request_id.encode(), message.to_bytes())])
    row = await pipeline.wait_for_row(message.request_id)
    assert row["status"] == "ok" and row["tenant"] == "acme" and row["user_id"] == "u-42"
    assert row["prompt"] == message.prompt and row["metadata"] == {"source": "producer-test"}


async def test_post_prompts_accepts_and_records(pipeline):
    async with httpx.AsyncClient(timeout=30, headers=pipeline.auth_headers) as client:
        response = await client.post(f"{pipeline.api_url}/prompts", json={"prompt": unique("Say hello."),
                                                                           "request_id": f"client-{uuid.uuid4()}"})
    assert response.status_code == 202
    request_id = response.json()["request_id"]
    assert request_id.startswith("client-")
    assert (await pipeline.wait_for_row(request_id))["status"] == "ok"


async def test_same_message_delivered_twice_leaves_one_row(pipeline):
    message = PromptMessage(prompt=unique("Who wrote Pride and Prejudice?"))
    record = (message.request_id.encode(), message.to_bytes())
    await produce(pipeline.settings.kafka_bootstrap, pipeline.settings.topic_prompts, [record, record])

    # The worker may answer the second copy with the first one's answer (it is in flight or already recorded:
    # stream_processors/agents/provider.py), or, when both copies pass that check at once, call the model again.
    row = await pipeline.wait_for_row(message.request_id)
    await asyncio.sleep(2)  # the copies are adjacent: by now the second has been taken up too
    calls = [c for c in pipeline.stub_calls() if c["prompt"] == message.prompt]
    assert 1 <= len(calls) <= 2
    if len(calls) == 2:
        # ... the second answer then reaches the sink as an update of the same row (completed after the 2nd call).
        second_call_at = max(c["at"] for c in calls)
        row = await pipeline.wait_for_row(message.request_id,
                                          where=lambda r: r["completed_at"].timestamp() > second_call_at)
    assert row["attempt_count"] == 1
    with psycopg.connect(pipeline.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM requests WHERE request_id = %s",
                            (message.request_id,)).fetchone()[0] == 1
    assert attempt_count(pipeline.dsn, message.request_id) == 1


async def test_unparseable_messages_go_to_dead_letter_and_processing_continues(pipeline):
    settings = pipeline.settings
    bad_json = f"{{not json {uuid.uuid4().hex}".encode()
    empty_prompt = f'{{"request_id": "{uuid.uuid4().hex}", "prompt": "   "}}'.encode()
    bad_completion = f"not a completion {uuid.uuid4().hex}".encode()
    # Parses, but the database refuses it (a token count beyond the column's range) ...
    refused_id, fine_id = f"refused-{uuid.uuid4().hex[:8]}", f"fine-{uuid.uuid4().hex[:8]}"
    await produce(settings.kafka_bootstrap, settings.topic_prompts, [(b"bad-1", bad_json), (b"bad-2", empty_prompt)])
    await produce(settings.kafka_bootstrap, settings.topic_completions, [
        (b"bad-3", bad_completion),
        (refused_id.encode(), completion_payload(refused_id, input_tokens=2**40)),
        (fine_id.encode(), completion_payload(fine_id))])  # ... while a good one in the same batch is written
    await produce(settings.kafka_bootstrap, f"{settings.topic_route_prefix}medium", [(b"bad-4", b"[]")])
    good = PromptMessage(prompt=unique("What is 12 times 7?"))
    await produce(settings.kafka_bootstrap, settings.topic_prompts, [(good.request_id.encode(), good.to_bytes())])

    wanted = {bad_json.decode(), empty_prompt.decode(), bad_completion.decode()}
    letters = await read_dead_letters(
        settings.kafka_bootstrap, settings.topic_dead_letter,
        until=lambda got: wanted <= {g.raw for g in got} and {"bad-4", refused_id} <= {g.key for g in got})
    by_raw = {letter.raw: letter for letter in letters}
    assert wanted <= set(by_raw), f"dead letters seen: {[g.raw[:40] for g in letters]}"
    assert by_raw[bad_json.decode()].stage == "classify" and by_raw[bad_json.decode()].key == "bad-1"
    assert by_raw[bad_json.decode()].source_topic == settings.topic_prompts
    assert "PromptMessage" in by_raw[bad_json.decode()].error
    assert "prompt" in by_raw[empty_prompt.decode()].error
    assert by_raw[bad_completion.decode()].stage == "sink"
    refused = next(g for g in letters if g.key == refused_id)
    assert refused.stage == "sink" and "database refused" in refused.error
    route_letter = next(g for g in letters if g.key == "bad-4")
    assert route_letter.stage == "provider:medium" and "RoutedMessage" in route_letter.error
    # The agents kept going: the good completion and the valid prompt after the bad ones are recorded.
    assert (await pipeline.wait_for_row(fine_id))["response"] == "Hello"
    assert pipeline.row(refused_id) is None
    assert (await pipeline.wait_for_row(good.request_id))["status"] == "ok"
    pipeline.check_alive()


async def test_generate_on_stalled_provider_returns_504_and_row_lands_later(pipeline):
    pipeline.stub_faults({"stub-small": {"delay_s": 4}})
    try:
        prompt = unique("What is the boiling point of water?")
        async with httpx.AsyncClient(timeout=30, headers=pipeline.auth_headers) as client:
            started = time.monotonic()
            response = await client.post(f"{pipeline.api_url}/generate", json={"prompt": prompt, "timeout_s": 1})
            assert time.monotonic() - started < 4
        assert response.status_code == 504, response.text
        request_id = response.json()["request_id"]
        assert request_id in response.json()["detail"]
        assert pipeline.row(request_id) is None  # not answered yet ...
        row = await pipeline.wait_for_row(request_id, timeout_s=60)  # ... but recorded once the model answers
        assert row["status"] == "ok" and row["final_model"] == "small" and row["latency_ms"] >= 3500
    finally:
        pipeline.stub_faults({})


async def test_generate_when_every_model_fails_returns_503_with_retry_after_and_records_the_failure(pipeline):
    # Every model refuses the request (a 4xx: the same on every try, so it is not parked for a later one).
    failing = {"fail_status": 400, "fail_times": 100}
    pipeline.stub_faults({"stub-small": failing, "stub-medium": failing, "stub-big": failing})
    try:
        async with httpx.AsyncClient(timeout=60, headers=pipeline.auth_headers) as client:
            response = await client.post(f"{pipeline.api_url}/generate", json={"prompt": unique("Say yes.")})
    finally:
        pipeline.stub_faults({})
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    body = response.json()
    assert body["status"] == "failed" and body["model"] is None and "400" in body["error"]
    # Fell back up the ladder as far as the cost cap allows (3x the routed model's price: medium, not big).
    assert [a["model"] for a in body["attempts"]] == ["small", "medium"]
    assert body["attempts"][-1]["next_reason_kind"] == "cost_cap" and body["attempts"][-1]["next_model"] is None
    row = pipeline.row(body["request_id"])  # recorded before the answer was sent
    assert row["status"] == "failed" and row["fell_back"] and row["attempt_count"] == 2
    assert attempt_count(pipeline.dsn, body["request_id"]) == 2


async def test_generate_for_a_request_parked_by_an_outage_answers_503_and_the_request_is_answered_later(pipeline):
    # The cheap and mid models are down for their next three calls; the expensive one is beyond the cost cap.
    failing = {"fail_status": 503, "fail_times": 3}
    pipeline.stub_faults({"stub-small": failing, "stub-medium": failing})
    try:
        async with httpx.AsyncClient(timeout=60, headers=pipeline.auth_headers) as client:
            response = await client.post(f"{pipeline.api_url}/generate",
                                         json={"prompt": unique("Say yes."), "timeout_s": 2})
        # Parked, not failed: the worker tells the waiting API process, so when the caller's own timeout passes it
        # gets 503 (its models are down, not slow) with Retry-After until the next try, and looks the request up later.
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["code"] == "models_unavailable" and "parked" in body["detail"] and body["retry_at"]
        assert int(response.headers["retry-after"]) >= 1
        request_id = body["request_id"]
        row = await pipeline.wait_for_row(request_id, timeout_s=120, where=lambda r: r["status"] != "expired")
    finally:
        pipeline.stub_faults({})
    assert row["status"] == "ok" and row["final_model"] == "small", row
    attempts = row["attempts"]
    assert [a["status"] for a in attempts][-1] == "ok" and all(a["status"] == "error" for a in attempts[:-1])
    assert len(attempts) >= 3 and "big" not in {a["model"] for a in attempts}
    assert any((a.get("next_reason") or "").startswith("parked: retry") for a in attempts)
    assert attempt_count(pipeline.dsn, request_id) == len(attempts)
    with psycopg.connect(pipeline.dsn) as conn:
        parks = conn.execute("SELECT parks FROM parked_requests WHERE request_id = %s", (request_id,)).fetchone()
    assert parks is not None and parks[0] >= 1


async def test_several_api_processes_each_get_their_own_replies(pipeline):
    second, second_url = pipeline.start_api("api-2")
    try:
        async with httpx.AsyncClient(timeout=60, headers=pipeline.auth_headers) as client:
            reply_topics = {(await client.get(f"{url}/healthz")).json()["reply_topic"]
                            for url in (pipeline.api_url, second_url)}
            assert len(reply_topics) == 2
            prompts = [unique(f"Spell the number {n} in words.") for n in range(8)]
            urls = [pipeline.api_url if n % 2 else second_url for n in range(8)]
            responses = await asyncio.gather(*(client.post(f"{url}/generate", json={"prompt": p})
                                               for url, p in zip(urls, prompts, strict=True)))
        for prompt, response in zip(prompts, responses, strict=True):
            assert response.status_code == 200, response.text
            assert prompt in response.json()["response"]
    finally:
        second.stop()
    # A stopped API process removes its reply topic.
    admin = AIOKafkaAdminClient(bootstrap_servers=pipeline.settings.kafka_bootstrap)
    await admin.start()
    try:
        topics = set(await admin.list_topics())
    finally:
        await admin.close()
    assert len(reply_topics & topics) == 1


async def test_readme_producer_example_lands_in_postgres(pipeline):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("## Producers", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", example, env=pipeline.env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    row = await pipeline.wait_for_row(out.decode().strip())
    assert row["tenant"] == "acme" and row["metadata"] == {"source": "readme-example"} and row["status"] == "ok"


async def test_worker_crash_redelivers_unfinished_work_and_keeps_committed_work(pipeline):
    """At-least-once across a crash: a request whose model call was in flight when the worker was killed is
    redelivered and recorded, and work finished (and committed) before the crash is not done again.
    Runs last: it replaces the module's worker."""
    pipeline.stub_faults({})
    finished = unique("Name a fruit.")
    async with httpx.AsyncClient(timeout=60, headers=pipeline.auth_headers) as client:
        assert (await client.post(f"{pipeline.api_url}/generate", json={"prompt": finished})).status_code == 200
    await asyncio.sleep(4)  # past Faust's commit interval (2.8 s): the finished request's offsets are committed
    pipeline.stub_faults({"stub-small": {"delay_s": 6}}, reset_calls=False)
    in_flight = PromptMessage(prompt=unique("Name a vegetable."))
    await produce(pipeline.settings.kafka_bootstrap, pipeline.settings.topic_prompts,
                  [(in_flight.request_id.encode(), in_flight.to_bytes())])
    deadline = time.monotonic() + 60
    while not any(c["prompt"] == in_flight.prompt for c in pipeline.stub_calls()):
        assert time.monotonic() < deadline, "the in-flight prompt never reached the model"
        await asyncio.sleep(0.1)
    os.killpg(pipeline.worker.process.pid, signal.SIGKILL)  # crash while the model call is in flight
    pipeline.worker.process.wait(timeout=10)
    pipeline.stub_faults({}, reset_calls=False)

    worker = spawn("worker-restarted", [sys.executable, "-m", "stream_processors", "worker"],
                   pipeline.log_dir / "worker-restarted.log", pipeline.env, Path(__file__).resolve().parents[2])
    pipeline.worker = worker
    wait_until(lambda: "Ready" in worker.log_path.read_text(errors="replace"), "restarted worker", 120, [worker])
    row = await pipeline.wait_for_row(in_flight.request_id, timeout_s=120)
    assert row["status"] == "ok" and row["attempt_count"] == 1
    calls = pipeline.stub_calls()
    assert len([c for c in calls if c["prompt"] == in_flight.prompt]) >= 2  # asked again after the crash
    assert len([c for c in calls if c["prompt"] == finished]) == 1  # committed before the crash: not redone


async def test_workers_report_consumer_lag_and_it_drains_to_zero(pipeline):
    # Lag comes from Faust's monitor (fetch high watermark minus committed offset), not from the broker's
    # ListOffsets: after traffic every fetched partition of the prompts topic is reported, and caught up.
    messages = [PromptMessage(request_id=uuid.uuid4().hex, prompt=unique("Name a colour."), max_tokens=16)
                for _ in range(12)]
    await produce(pipeline.settings.kafka_bootstrap, pipeline.settings.topic_prompts,
                  [(m.request_id.encode(), m.to_bytes()) for m in messages])
    for message in messages:
        await pipeline.wait_for_row(message.request_id)
    # Only fresh heartbeats count, as in /readyz: a worker killed by an earlier test leaves its last row behind,
    # and the restarted one reports its partitions from its first heartbeat after the group assigned them.
    fresh_s = pipeline.settings.heartbeat_fresh_s
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        with psycopg.connect(pipeline.dsn) as conn:
            lags = [row[0] for row in conn.execute(
                "SELECT lag FROM worker_heartbeats WHERE app_id = %s AND beat_at > now() - make_interval(secs => %s)",
                (pipeline.env["ROUTER_FAUST_APP_ID"], fresh_s))]
        prompts_lag = {p: n for lag in lags for p, n in lag.get(pipeline.settings.topic_prompts, {}).items()}
        if prompts_lag and all(n == 0 for n in prompts_lag.values()):
            break
        assert asyncio.get_running_loop().time() < deadline, f"lag never reached 0: {lags}"
        await asyncio.sleep(0.5)
    async with httpx.AsyncClient(timeout=10) as client:
        ready = (await client.get(f"{pipeline.api_url}/readyz")).json()
    assert ready["consumer_lag"].get(pipeline.settings.topic_prompts) == 0, ready
