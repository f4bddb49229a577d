"""Topic names and idempotent topic creation at their final partition counts.

The local broker (Tansu) cannot add partitions later and forgets topics on restart, so every start
creates every topic at its final size; an existing topic is left alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from core.registry import ModelRegistry
from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int


def route_topic(settings: Settings, model: str) -> str:
    return f"{settings.topic_route_prefix}{model}"


def pipeline_topics(settings: Settings, registry: ModelRegistry) -> list[TopicSpec]:
    """Every topic the pipeline uses, at its final partition count."""
    topics = [
        TopicSpec(settings.topic_prompts, settings.prompts_partitions),
        TopicSpec(settings.topic_completions, settings.completions_partitions),
        # Dead letters are rare and read by people: one partition keeps them in order.
        TopicSpec(settings.topic_dead_letter, 1),
        TopicSpec(settings.topic_feedback, settings.feedback_partitions),
    ]
    topics += [TopicSpec(route_topic(settings, spec.name), settings.route_partitions) for spec in registry.models]
    return topics


async def create_topics(bootstrap: str, topics: list[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; returns the names created now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="router-topic-admin")
    await admin.start()
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t.name not in existing]
        if missing:
            response = await admin.create_topics(
                [NewTopic(t.name, num_partitions=t.partitions, replication_factor=1) for t in missing])
            for name, code, *rest in response.topic_errors:
                if code == 0:
                    created.append(name)
                    continue
                error = for_code(code)
                if error is TopicAlreadyExistsError:
                    continue  # another process created it between our list and create
                raise RuntimeError(f"could not create topic {name!r}: {error.__name__} {rest[0] if rest else ''}")
        for topic in missing:
            if topic.name in created:
                log.info("created topic %s (%d partitions)", topic.name, topic.partitions)
    finally:
        await admin.close()
    return created


async def partition_mismatches(bootstrap: str, topics: list[TopicSpec]) -> dict[str, tuple[int, int]]:
    """Existing topics whose partition count differs from the configured one: {name: (configured, actual)}.
    A topic auto-created by a broker at its default count, or created by an older configuration, spreads keys
    differently and caps how many workers can share it; this is reported at start-up, never fixed silently."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="router-topic-admin")
    await admin.start()
    try:
        described = await admin.describe_topics([t.name for t in topics])
    finally:
        await admin.close()
    actual = {d["topic"]: len(d["partitions"]) for d in described if d.get("error_code", 0) == 0}
    return {t.name: (t.partitions, actual[t.name]) for t in topics
            if t.name in actual and actual[t.name] != t.partitions}


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="router-topic-admin")
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


async def ensure_pipeline_topics(settings: Settings, registry: ModelRegistry) -> list[str]:
    """Create missing topics, then report (log an error for) every topic at a partition count other than its
    configured one."""
    topics = pipeline_topics(settings, registry)
    created = await create_topics(settings.kafka_bootstrap, topics)
    for name, (configured, actual) in (await partition_mismatches(settings.kafka_bootstrap, topics)).items():
        log.error("topic %s has %d partitions but is configured for %d: recreate it (or fix ROUTER_*_PARTITIONS)",
                  name, actual, configured)
    return created
