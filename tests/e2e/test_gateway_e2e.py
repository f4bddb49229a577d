"""The OpenAI-compatible gateway end to end: the real openai SDK (sync, async, streaming) and LangChain's ChatOpenAI
against the API process, through Tansu, a Faust worker, the stub models and Postgres."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import openai
import psycopg
import pytest

pytestmark = pytest.mark.timeout(240)


def unique(text: str) -> str:
    return f"{text} [{uuid.uuid4().hex[:8]}]"


def client(pipeline) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{pipeline.api_url}/v1", api_key=pipeline.api_key, max_retries=0, timeout=60)


def aclient(pipeline, url: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url or pipeline.api_url}/v1", api_key=pipeline.api_key, max_retries=0,
                              timeout=60)


def request_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM requests").fetchone()[0]


def attempt_count(dsn: str, request_id: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM request_attempts WHERE request_id = %s",
                            (request_id,)).fetchone()[0]


async def test_sync_sdk_multi_turn_with_system_prompt_routes_and_reports_the_router(pipeline):
    pipeline.stub_faults({})
    question = unique("What is the capital of France?")
    messages = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi. Ask away."},
        {"role": "user", "content": [{"type": "text", "text": question}]},
    ]
    raw = client(pipeline).chat.completions.with_raw_response.create(model="router", messages=messages,
                                                                     temperature=0.2, seed=7, stop=["\n\n"])
    completion = raw.parse()
    assert completion.model == "small"  # the model that answered: a short lookup goes to the cheap model
    assert completion.choices[0].message.content.startswith("[stub-small] answer:")
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    router = completion.model_extra["router"]
    request_id = raw.headers["x-router-request-id"]
    assert router["request_id"] == request_id and completion.id == f"chatcmpl-{request_id}"
    assert raw.headers["x-router-model"] == router["model"] == "small" and raw.headers["x-router-tier"] == "cheap"
    assert router["cost_usd"] > 0 and float(raw.headers["x-router-cost-usd"]) == pytest.approx(router["cost_usd"])
    assert float(raw.headers["x-router-counterfactual-cost-usd"]) > float(raw.headers["x-router-cost-usd"])
    assert router["routed_model"] == "small" and router["difficulty"] == "simple" and router["reason"]

    # The provider received the conversation as sent, and the pass-through parameters.
    call = pipeline.stub_calls()[-1]
    assert call["model"] == "stub-small"
    assert [m["role"] for m in call["messages"]] == ["system", "user", "assistant", "user"]
    assert call["messages"][3]["content"] == [{"type": "text", "text": question}]
    assert call["temperature"] == 0.2 and call["seed"] == 7 and call["stop"] == ["\n\n"]

    row = await pipeline.wait_for_row(request_id, timeout_s=30)
    assert row["prompt"] == question  # the last user turn: what the classifier read
    assert row["final_model"] == "small" and row["cost_micro_usd"] == round(router["cost_usd"] * 1e6)
    assert row["ttft_ms"] is None  # not streamed
    assert attempt_count(pipeline.dsn, request_id) == 1


async def test_async_sdk_streams_with_usage_and_records_time_to_first_token(pipeline):
    pipeline.stub_faults({})
    prompt = unique("Name a primary color.")
    async with aclient(pipeline) as api:
        # A requested model: no answer check can send it elsewhere, so its tokens stream live.
        stream = await api.chat.completions.create(model="big", messages=[{"role": "user", "content": prompt}],
                                                   stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    text = "".join(c.choices[0].delta.content for c in content_chunks)
    assert text == f"[stub-big] answer: {prompt}"
    assert len(content_chunks) == len(text.split())  # one stub word per chunk: streamed live, not re-chunked
    assert all(c.model == "big" for c in chunks)
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(text.split())
    router = finish[0].model_extra["router"]
    assert router["model"] == "big" and router["cost_usd"] > 0
    row = await pipeline.wait_for_row(router["request_id"], timeout_s=30)
    assert row["routed_model"] == row["final_model"] == "big" and row["policy"] == "direct"
    assert row["difficulty"] == router["difficulty"] == "simple"
    assert row["ttft_ms"] is not None and 0 < row["ttft_ms"] <= row["latency_ms"] + 1000
    assert row["tokens_out"] == len(text.split())


async def test_routed_stream_with_answer_checks_is_held_until_checked(pipeline):
    # The cheap model refuses: its answer must never reach the client; the escalated answer does.
    pipeline.stub_faults({"stub-small": {"refuse": True}})
    prompt = unique("What is 2 + 2?")
    async with aclient(pipeline) as api:
        stream = await api.chat.completions.create(model="router", messages=[{"role": "user", "content": prompt}],
                                                   stream=True)
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"[stub-medium] answer: {prompt}" and "sorry" not in text.lower()
    assert {c.model for c in chunks} == {"medium"}
    router = next(c for c in chunks if c.choices and c.choices[0].finish_reason).model_extra["router"]
    assert [a["status"] for a in router["attempts"]] == ["rejected", "ok"]
    row = await pipeline.wait_for_row(router["request_id"], timeout_s=30)
    assert row["escalated"] and row["final_model"] == "medium" and row["ttft_ms"] is not None
    pipeline.stub_faults({})


def test_models_lists_router_its_policy_alias_and_every_model(pipeline):
    models = [m.id for m in client(pipeline).models.list()]
    assert models[0] == "router" and "router/threshold" in models
    assert {"small", "medium", "big"} <= set(models)


async def test_direct_model_unknown_model_and_router_alias(pipeline):
    pipeline.stub_faults({})
    api = client(pipeline)
    direct = api.chat.completions.create(model="medium", messages=[{"role": "user", "content": unique("Hi")}])
    assert direct.model == "medium" and direct.model_extra["router"]["reason"] == "requested model medium"
    row = await pipeline.wait_for_row(direct.model_extra["router"]["request_id"], timeout_s=30)
    assert row["final_model"] == "medium" and row["cost_micro_usd"] > 0 and row["policy"] == "direct"
    # Sent straight to its model's topic, classified by the provider agent meanwhile: the prediction is recorded.
    assert (row["difficulty"], row["classifier"]) == ("simple", "heuristic")
    assert direct.model_extra["router"]["difficulty"] == "simple"
    aliased = api.chat.completions.create(model="router/threshold", messages=[{"role": "user",
                                                                               "content": unique("Hi")}])
    assert aliased.model == "small"
    with pytest.raises(openai.NotFoundError) as caught:
        api.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.code == "model_not_found" and caught.value.body["param"] == "model"


async def test_tools_pass_through_to_a_model_that_supports_them(pipeline):
    pipeline.stub_faults({})
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                "parameters": {"type": "object",
                                                               "properties": {"city": {"type": "string"}}}}}]
    api = client(pipeline)
    prompt = unique("What is the weather in Paris?")
    completion = api.chat.completions.create(model="router", messages=[{"role": "user", "content": prompt}],
                                             tools=tools, tool_choice="auto")
    # The cheap model does not declare tool support: the request goes to the cheapest one that does.
    assert completion.model == "medium"
    assert "tools" in completion.model_extra["router"]["reason"]
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    stub_call = pipeline.stub_calls()[-1]
    assert stub_call["tools"] == tools and stub_call["tool_choice"] == "auto"
    # The tool's result goes back as a tool turn; the model answers with text.
    follow_up = api.chat.completions.create(model="router", tools=tools, messages=[
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"},
    ])
    assert follow_up.choices[0].message.content.startswith("[stub-medium] answer:")
    assert pipeline.stub_calls()[-1]["messages"][2] == {"role": "tool", "tool_call_id": call.id,
                                                       "content": "18 C and sunny"}


@pytest.mark.parametrize(("body", "param", "status"), [
    ({"model": "router", "messages": []}, "messages", 400),
    ({"model": "router", "messages": [{"role": "user"}]}, "messages[0]", 400),
    ({"model": "router", "messages": [{"role": "user", "content": "  "}]}, "messages[0]", 400),
    ({"model": "router", "messages": [{"role": "wizard", "content": "Hi"}]}, "messages[0].role", 400),
    ({"model": "router", "messages": "Hi"}, "messages", 400),
    ({"model": "router", "messages": [{"role": "user", "content": "Hi"}], "temperature": "hot"}, "temperature", 400),
    ({"model": "router", "messages": [{"role": "user", "content": "Hi"}], "n": 2}, "n", 400),
    ({"messages": [{"role": "user", "content": "Hi"}]}, "model", 400),
    ({"model": "router", "messages": [{"role": "user", "content": "x" * 1_100_000}]}, None, 413),
])
async def test_bad_input_gets_openai_shaped_errors_and_nothing_is_published(pipeline, body, param, status):
    before = request_count(pipeline.dsn)
    pipeline.stub_faults({})
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(f"{pipeline.api_url}/v1/chat/completions", json=body,
                                   headers=pipeline.auth_headers)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["message"] and error["param"] == param
        # A good request after it: once its row is in, nothing from the bad one was published before it.
        good = await http.post(f"{pipeline.api_url}/v1/chat/completions", headers=pipeline.auth_headers,
                               json={"model": "router", "messages": [{"role": "user", "content": unique("Hi")}],
                                     "unknown_field": {"ignored": True}})
        assert good.status_code == 200, good.text
    await pipeline.wait_for_row(good.json()["router"]["request_id"], timeout_s=30)
    assert request_count(pipeline.dsn) == before + 1
    assert len(pipeline.stub_calls()) == 1


async def test_client_disconnecting_mid_stream_leaves_the_request_recorded_once(pipeline):
    words = [f"word{i}" for i in range(40)]
    pipeline.stub_faults({"stub-big": {"reply": " ".join(words), "token_delay_s": 0.05}})
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream("POST", f"{pipeline.api_url}/v1/chat/completions", headers=pipeline.auth_headers,
                               json={"model": "big", "stream": True,
                                     "messages": [{"role": "user", "content": unique("Count to forty.")}]}) as stream:
            assert stream.status_code == 200
            request_id = stream.headers["x-router-request-id"]
            received = []
            async for line in stream.aiter_lines():
                if line.startswith("data: ") and '"content": "word' in line:
                    received.append(line)
                    if len(received) == 3:
                        break  # leave mid-stream
    row = await pipeline.wait_for_row(request_id, timeout_s=30)
    assert row["status"] == "ok" and row["response"] == " ".join(words)
    assert row["tokens_out"] == len(words) and row["cost_micro_usd"] > 0  # what the model generated, charged
    await asyncio.sleep(1.0)
    assert attempt_count(pipeline.dsn, request_id) == 1 and pipeline.row(request_id)["attempt_count"] == 1
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{pipeline.api_url}/healthz")).status_code == 200
    pipeline.stub_faults({})


async def test_conversation_is_kept_on_the_model_an_earlier_turn_used(pipeline):
    pipeline.stub_faults({})
    conversation = f"conv-{uuid.uuid4().hex[:8]}"
    api = client(pipeline)
    first = api.chat.completions.create(model="big", user="u-1", extra_headers={"x-conversation-id": conversation},
                                        messages=[{"role": "user", "content": unique("Plan a database migration.")}])
    assert first.model == "big"
    follow_up = [{"role": "user", "content": "Plan a database migration."},
                 {"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": unique("What is 2 + 2?")}]
    second = api.chat.completions.create(model="router", user="u-1", messages=follow_up,
                                         extra_headers={"x-conversation-id": conversation})
    assert second.model == "big" and "conversation kept on expensive" in second.model_extra["router"]["reason"]
    # The same id in metadata works too; another conversation (or none) routes on its own.
    third = api.chat.completions.create(model="router", user="u-1", messages=follow_up,
                                        metadata={"conversation_id": conversation})
    assert third.model == "big"
    other = api.chat.completions.create(model="router", user="u-1", messages=follow_up,
                                        extra_headers={"x-conversation-id": f"{conversation}-other"})
    assert other.model == "small"


async def test_streams_arrive_in_order_under_32_concurrent_streams_on_two_api_processes(pipeline):
    pipeline.stub_faults({"stub-small": {"token_delay_s": 0.002}, "stub-big": {"token_delay_s": 0.002}})
    second, second_url = pipeline.start_api("api-stream-2")
    try:
        prompts = [unique(f"Spell the number {n} in words, then count from one to ten slowly.") for n in range(32)]

        async def one(n: int) -> tuple[str, str, int]:
            async with aclient(pipeline, second_url if n % 2 else pipeline.api_url) as api:
                stream = await api.chat.completions.create(
                    model="big" if n % 4 < 2 else "small", messages=[{"role": "user", "content": prompts[n]}],
                    stream=True)
                pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
            return "".join(pieces), ("big" if n % 4 < 2 else "small"), len(pieces)

        results = await asyncio.gather(*(one(n) for n in range(32)))
    finally:
        second.stop()
    pipeline.stub_faults({})
    for prompt, (text, model, pieces) in zip(prompts, results, strict=True):
        assert text == f"[stub-{model}] answer: {prompt}"
        assert pieces == len(text.split())


def test_langchain_chat_openai_against_the_router(pipeline):
    chat_openai = pytest.importorskip("langchain_openai").ChatOpenAI
    llm = chat_openai(base_url=f"{pipeline.api_url}/v1", api_key=pipeline.api_key, model="router", max_retries=0)
    prompt = unique("What is the capital of Italy?")
    reply = llm.invoke([("system", "Be brief."), ("human", prompt)])
    assert reply.content == f"[stub-small] answer: Be brief.\n{prompt}"
    assert reply.response_metadata["model_name"] == "small"
    streamed = "".join(chunk.content for chunk in llm.stream(prompt))
    assert streamed == f"[stub-small] answer: {prompt}"


def test_generate_still_answers_through_the_same_bridge(pipeline):
    response = httpx.post(f"{pipeline.api_url}/generate", json={"prompt": unique("What is 3 + 3?")},
                          headers=pipeline.auth_headers, timeout=60)
    assert response.status_code == 200 and response.json()["model"] == "small"
    assert json.loads(response.text)["response"].startswith("[stub-small] answer:")
