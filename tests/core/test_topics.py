"""Topic creation at final partition counts, idempotent, on the real broker."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer

from core.registry import ModelRegistry
from core.settings import Settings
from core.topics import TopicSpec, create_topics, delete_topics, partition_mismatches, pipeline_topics

REGISTRY = ModelRegistry.model_validate({"models": [
    {"name": "small", "tier": "cheap", "base_url": "http://127.0.0.1:1/v1", "prices": {"input": 1, "output": 1}},
    {"name": "medium", "tier": "mid", "base_url": "http://127.0.0.1:1/v1", "prices": {"input": 2, "output": 2}},
    {"name": "large", "tier": "expensive", "base_url": "http://127.0.0.1:1/v1", "prices": {"input": 3, "output": 3}},
]})


async def test_pipeline_topics_created_once_at_final_partition_counts(tansu_bootstrap):
    suffix = uuid.uuid4().hex[:8]
    settings = Settings().model_copy(update={
        "kafka_bootstrap": tansu_bootstrap, "topic_prompts": f"prompts-{suffix}",
        "topic_completions": f"completions-{suffix}", "topic_dead_letter": f"dead-letter-{suffix}",
        "topic_route_prefix": f"route-{suffix}.", "prompts_partitions": 4, "route_partitions": 3,
        "completions_partitions": 2, "topic_feedback": f"feedback-{suffix}"})
    topics = pipeline_topics(settings, REGISTRY)
    assert {t.name for t in topics} == {f"prompts-{suffix}", f"completions-{suffix}", f"dead-letter-{suffix}",
                                        f"route-{suffix}.small", f"route-{suffix}.medium", f"route-{suffix}.large",
                                        f"feedback-{suffix}"}
    created = await create_topics(tansu_bootstrap, topics)
    assert sorted(created) == sorted(t.name for t in topics)
    assert await create_topics(tansu_bootstrap, topics) == []  # second start: nothing to do, no error

    consumer = AIOKafkaConsumer(bootstrap_servers=tansu_bootstrap)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        for topic in topics:
            assert len(consumer.partitions_for_topic(topic.name) or ()) == topic.partitions, topic.name
    finally:
        await consumer.stop()
    await delete_topics(tansu_bootstrap, [t.name for t in topics])


async def test_a_topic_at_the_wrong_partition_count_is_reported(tansu_bootstrap):
    name = f"wrong-count-{uuid.uuid4().hex[:6]}"
    await create_topics(tansu_bootstrap, [TopicSpec(name, 1)])  # e.g. auto-created at a broker default
    assert await partition_mismatches(tansu_bootstrap, [TopicSpec(name, 1)]) == {}
    assert await partition_mismatches(tansu_bootstrap, [TopicSpec(name, 6)]) == {name: (6, 1)}
    assert await create_topics(tansu_bootstrap, [TopicSpec(name, 6)]) == []  # reported, left alone, not "fixed"
