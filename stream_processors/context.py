"""What every agent shares: settings, the routing runtime, topics, the database pool and the dead-letter path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, TypeVar

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from mode import Service
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError
from tenacity import AsyncRetrying, before_sleep_log, retry_if_exception, wait_exponential

from core.messages import DeadLetterMessage, _Message
from core.settings import Settings
from core.topics import route_topic
from stream_processors.call_log import CallRecorder
from stream_processors.metrics import WorkerMetrics
from stream_processors.parking import Parking
from stream_processors.reconciler import WorkerDuties
from stream_processors.runtime import Runtime

log = logging.getLogger(__name__)

M = TypeVar("M", bound=_Message)

# Dead-letter records keep the start of the bad message: enough to debug, never a huge record.
_MAX_RAW_CHARS = 64_000
_MAX_ERROR_CHARS = 4_000


def _broker_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, (KafkaTimeoutError, KafkaConnectionError)) or (
        isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False)))


def _text(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    return str(raw)


class PipelineContext(Service):
    """Started and stopped with the Faust app (as its dependency): owns the pool and the provider clients."""

    def __init__(self, app: faust.App, settings: Settings, runtime: Runtime, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.settings = settings
        self.runtime = runtime
        self.prompts_topic = self.raw_topic(settings.topic_prompts, settings.prompts_partitions)
        self.completions_topic = self.raw_topic(settings.topic_completions, settings.completions_partitions)
        self.dead_letter_topic = self.raw_topic(settings.topic_dead_letter, 1)
        self.feedback_topic = self.raw_topic(settings.topic_feedback, settings.feedback_partitions)
        self.route_topics = {
            spec.name: self.raw_topic(route_topic(settings, spec.name), settings.route_partitions)
            for spec in runtime.registry.models
        }
        self._pool: AsyncConnectionPool | None = None
        self._calls_pool: AsyncConnectionPool | None = None
        self._pool_lock = asyncio.Lock()
        self._delivery_retry = AsyncRetrying(retry=retry_if_exception(_broker_unavailable),
                                             wait=wait_exponential(multiplier=0.2, max=10),
                                             before_sleep=before_sleep_log(log, logging.WARNING), reraise=True)
        self._reply_producer: AIOKafkaProducer | None = None
        self._reply_lock = asyncio.Lock()
        self.duties = WorkerDuties(self)
        self.metrics = WorkerMetrics()
        # Request ids whose ladder this worker is running now (copies of one request share its partition).
        self.in_flight: set[str] = set()
        self.calls = CallRecorder(self.calls_pool)
        self.parking = Parking(self)

    @Service.task
    async def _flush_calls(self) -> None:
        if self.settings.pg_dsn:
            await self.calls.run()

    async def on_start(self) -> None:
        if self.settings.worker_metrics_port:
            self.metrics.serve(self.settings.worker_metrics_port)

    @Service.task
    async def _heartbeat(self) -> None:
        if self.settings.pg_dsn:
            await self.duties.run_forever("heartbeat", self.duties.heartbeat_once, self.settings.heartbeat_interval_s)

    @Service.task
    async def _reconcile(self) -> None:
        if self.settings.pg_dsn:
            await self.duties.run_forever("reconciler", self.duties.reconcile_once, self.settings.reconcile_interval_s)

    @Service.task
    async def _release_parked(self) -> None:
        if self.parking.enabled:
            await self.parking.sweep_forever()

    async def reply_producer(self) -> AIOKafkaProducer:
        """A producer of its own for the API processes' reply topics. Kept apart from Faust's producer because
        a Kafka client keeps refreshing metadata for every topic it ever wrote to, and on a broker that
        auto-creates topics that would bring back the reply topic of an API process that has gone."""
        async with self._reply_lock:
            if self._reply_producer is None:
                producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap,
                                            client_id=f"{self.settings.faust_app_id}-replies",
                                            enable_idempotence=False, acks=1)
                await producer.start()
                self._reply_producer = producer
        return self._reply_producer

    @Service.timer(30.0)
    async def _forget_reply_topics(self) -> None:
        # An empty topic set means "metadata for all existing topics": no refresh asks for a deleted one.
        if self._reply_producer is not None:
            await self._reply_producer.client.set_topics([])

    def raw_topic(self, name: str, partitions: int) -> faust.TopicT:
        # Raw bytes in and out: every stage parses with core.messages itself, so a bad message is
        # dead-lettered instead of crashing the agent inside Faust's deserializer.
        return self.app.topic(name, key_serializer="raw", value_serializer="raw", partitions=partitions)

    async def pool(self) -> AsyncConnectionPool:
        async with self._pool_lock:
            if self._pool is None:
                if not self.settings.pg_dsn:
                    raise RuntimeError("the sink needs a database: set ROUTER_PG_DSN or PG_DSN")
                pool = AsyncConnectionPool(self.settings.pg_dsn, min_size=1, max_size=self.settings.pg_pool_max,
                                           open=False, name="router-sink")
                await pool.open(wait=True, timeout=60)
                self._pool = pool
        return self._pool

    async def calls_pool(self) -> AsyncConnectionPool:
        """A pool of its own for the per-call writes and checks (model_calls, answered-already), so that many
        concurrent model calls never starve the sink, the heartbeat or the reconciler of connections."""
        async with self._pool_lock:
            if self._calls_pool is None:
                # Autocommit: the answered check is one round trip; writes open their own transaction.
                pool = AsyncConnectionPool(self.settings.pg_dsn,
                                           min_size=min(self.settings.pg_pool_min, self.settings.pg_pool_max),
                                           max_size=self.settings.pg_pool_max, open=False, name="router-calls",
                                           kwargs={"autocommit": True})
                await pool.open(wait=True, timeout=60)
                self._calls_pool = pool
        return self._calls_pool

    async def already_answered(self, request_id: str) -> bool:
        """Whether Postgres holds this request's answer (ok or failed). When the database cannot say within a
        few seconds, the model is called: a possible double call is better than holding a request back."""
        if not self.settings.pg_dsn:
            return False
        return await self.calls.answered(request_id)

    async def on_stop(self) -> None:
        if self._reply_producer is not None:
            await self._reply_producer.stop()
        if self.calls.backlog:
            await self.calls.flush()  # a clean stop leaves no call unrecorded
        for pool in (self._pool, self._calls_pool):
            if pool is not None:
                await pool.close()
        await self.runtime.aclose()

    async def parse_or_dead_letter(self, event: faust.EventT, model: type[M], stage: str) -> M | None:
        """The event's value as ``model``, or None after dead-lettering a value that is not one."""
        try:
            return model.from_bytes(event.value)
        except (ValidationError, ValueError, TypeError) as exc:
            await self.dead_letter(event, stage, f"not a valid {model.__name__}: {exc}")
            return None

    async def parse_batch(self, events: Sequence[faust.EventT], model: type[M],
                          stage: str) -> list[tuple[faust.EventT, M]]:
        """The events that parse as ``model``, each with its message; the rest are dead-lettered."""
        parsed = []
        for event in events:
            message = await self.parse_or_dead_letter(event, model, stage)
            if message is not None:
                parsed.append((event, message))
        return parsed

    async def dead_letter(self, event: faust.EventT, stage: str, error: str) -> None:
        """Publish the message that could not be handled to the dead-letter topic and wait for the broker's ack,
        so the source offset is committed only once the dead letter is safe."""
        message = event.message
        record = DeadLetterMessage(
            source_topic=message.topic, partition=message.partition, offset=message.offset,
            key=_text(message.key) or None, raw=_text(message.value)[:_MAX_RAW_CHARS],
            raw_chars=len(_text(message.value)), raw_truncated=len(_text(message.value)) > _MAX_RAW_CHARS,
            error=error[:_MAX_ERROR_CHARS], stage=stage,
        )
        self.metrics.dead_letters.labels(stage).inc()
        if len(record.raw) < len(_text(message.value)):
            log.warning("dead letter of %s[%s]@%s keeps the first %d of %d characters (raw_truncated)", message.topic,
                        message.partition, message.offset, len(record.raw), len(_text(message.value)))
        log.warning("dead-lettered %s[%s]@%s at %s: %s", message.topic, message.partition, message.offset, stage,
                    error.splitlines()[0][:300] if error else "")
        await self.deliver(self.dead_letter_topic, message.key, record.to_bytes())

    async def deliver(self, topic: faust.TopicT, key: bytes | None, value: bytes) -> None:
        """Send and wait for the broker's ack, retrying while the broker is unreachable: the source offset is
        committed after this returns, so giving up here would lose the message."""
        async for attempt in self._delivery_retry.copy():
            with attempt:
                await (await topic.send(key=key, value=value))
