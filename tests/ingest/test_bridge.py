"""The API's broker link against the real broker: where a request is published."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition

from core.messages import PromptMessage, RoutedMessage, Tier
from core.registry import ModelRegistry
from core.settings import Settings
from core.topics import TopicSpec, create_topics, route_topic
from ingest.bridge import GenerateTimeout, KafkaBridge
from tests.e2e.conftest import MODELS_YAML


async def read_topic(settings: Settings, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek(partition, 0)
        batches = await consumer.getmany(timeout_ms=1500)
        return [r.value for records in batches.values() for r in records]
    finally:
        await consumer.stop()


async def test_a_request_naming_its_model_goes_straight_to_that_models_topic(tansu_bootstrap):
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(_env_file=None).model_copy(update={
        "kafka_bootstrap": tansu_bootstrap, "topic_prompts": f"prompts-br-{suffix}",
        "topic_route_prefix": f"route-br-{suffix}.", "topic_replies_prefix": f"replies-br-{suffix}."})
    registry = ModelRegistry.model_validate(yaml.safe_load(MODELS_YAML))
    await create_topics(tansu_bootstrap, [TopicSpec(settings.topic_prompts, 1)] + [
        TopicSpec(route_topic(settings, spec.name), 1) for spec in registry.models])
    bridge = KafkaBridge(settings, registry=registry)
    await bridge.start()
    try:
        routed_by_the_router = PromptMessage(prompt="What is 2 + 2?")
        named = PromptMessage(prompt="What is 2 + 2?", requested_model="big")
        named_near_budget = PromptMessage(prompt="What is 2 + 2?", requested_model="big", max_tier=Tier.cheap)
        for prompt in (routed_by_the_router, named, named_near_budget):
            await bridge.publish(prompt)
    finally:
        await bridge.stop()
    assert [PromptMessage.from_bytes(v).request_id for v in await read_topic(settings, settings.topic_prompts)] == [
        routed_by_the_router.request_id]
    [to_big] = [RoutedMessage.from_bytes(v) for v in await read_topic(settings, route_topic(settings, "big"))]
    assert (to_big.prompt.request_id, to_big.target_model, to_big.decision.policy) == (named.request_id, "big", "direct")
    assert to_big.decision.label is None  # classified by the provider agent while the model answers
    [to_small] = [RoutedMessage.from_bytes(v) for v in await read_topic(settings, route_topic(settings, "small"))]
    assert to_small.prompt.request_id == named_near_budget.request_id and to_small.decision.tier == Tier.cheap
    assert to_small.decision.reasons[-1] == "budget near: capped at the cheap tier (small)"


async def test_replies_are_fetched_with_the_short_wait_only_while_a_caller_waits(tansu_bootstrap):
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(_env_file=None).model_copy(update={
        "kafka_bootstrap": tansu_bootstrap, "topic_prompts": f"prompts-rw-{suffix}",
        "topic_replies_prefix": f"replies-rw-{suffix}.", "consumer_fetch_max_wait_ms": 50,
        "reply_fetch_max_wait_ms": 3})
    await create_topics(tansu_bootstrap, [TopicSpec(settings.topic_prompts, 1)])
    bridge = KafkaBridge(settings)
    await bridge.start()
    try:
        fetcher = bridge._consumer._fetcher
        assert fetcher._fetch_max_wait_ms == 50  # idle: the usual wait
        waiting = asyncio.create_task(bridge.generate(PromptMessage(prompt="hi"), timeout_s=1.0))
        await asyncio.sleep(0.3)
        assert fetcher._fetch_max_wait_ms == 3  # a caller waits: replies are fetched with the short wait
        with pytest.raises(GenerateTimeout):
            await waiting  # no worker here: nobody answers
        assert fetcher._fetch_max_wait_ms == 50
    finally:
        await bridge.stop()
