"""The API process's link to the broker: publishes prompts and collects the completions meant for it.

Each API process owns a reply topic ``replies.<instance-id>`` (1 partition), created at startup and
deleted at shutdown. The reply consumer assigns partition 0 by hand and reads from offset 0 with no
consumer group: it never depends on latest offsets (which the local broker gets wrong) and several API
processes never steal each other's replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from core.messages import ChunkMessage, CompletionMessage, ParkedNotice, PromptMessage, RoutedMessage, utcnow
from core.registry import ModelRegistry
from core.settings import Settings
from core.topics import TopicSpec, create_topics, delete_topics, route_topic
from routing.router import direct_decision

log = logging.getLogger(__name__)


def new_instance_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40]
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class GenerateTimeout(Exception):
    """No completion in time. ``parked``: the latest notice that the request waits for its models to come back."""

    def __init__(self, request_id: str, timeout_s: float, parked: ParkedNotice | None = None) -> None:
        super().__init__(f"no completion for {request_id} within {timeout_s:g}s")
        self.request_id = request_id
        self.timeout_s = timeout_s
        self.parked = parked

    def retry_after_s(self) -> int:
        """Seconds until the parked request's next try (at least 1)."""
        assert self.parked is not None
        return max(1, math.ceil((self.parked.retry_at - utcnow()).total_seconds()))

    def parked_detail(self) -> str:
        notice = self.parked
        assert notice is not None
        return (f"every model this request may use is down ({notice.error or 'no answer'}); it is parked and retried "
                f"until {notice.deadline_at.isoformat(timespec='seconds')} (next try "
                f"{notice.retry_at.isoformat(timespec='seconds')}, parked {notice.parks} time(s)), then recorded: "
                f"GET /requests/{self.request_id}")


# Conversations whose models this process remembers (the latest ones), for keeping a conversation on its model
# even before the previous turn's row is in Postgres.
_CONVERSATIONS_KEPT = 10_000


def conversation_key(metadata: dict[str, str], user: str | None) -> tuple[str, str | None] | None:
    conversation_id = metadata.get("conversation_id")
    return (conversation_id, user) if conversation_id else None


class KafkaBridge:
    def __init__(self, settings: Settings, instance_id: str | None = None,
                 registry: ModelRegistry | None = None) -> None:
        self.settings = settings
        # With the model registry, a request that names its model is published straight to that model's topic.
        self.registry = registry
        self.instance_id = instance_id or new_instance_id()
        self.reply_topic = f"{settings.topic_replies_prefix}{self.instance_id}"
        self._waiters: dict[str, asyncio.Future[CompletionMessage]] = {}
        self._streams: dict[str, asyncio.Queue[ChunkMessage | CompletionMessage]] = {}
        self._parked: dict[str, ParkedNotice] = {}  # the latest parked notice of a request someone waits for
        self._conversation_models: OrderedDict[tuple[str, str | None], set[str]] = OrderedDict()
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._listener: asyncio.Task | None = None

    async def start(self) -> None:
        bootstrap = self.settings.kafka_bootstrap
        # Idempotent producers cannot handshake with the local broker; the sink dedupes by request id instead.
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id=f"ingest-{self.instance_id}",
                                          enable_idempotence=False, acks="all")
        await self._producer.start()
        await create_topics(bootstrap, [TopicSpec(self.reply_topic, 1)])
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, client_id=f"ingest-replies-{self.instance_id}",
                                          group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                          fetch_max_wait_ms=self.settings.consumer_fetch_max_wait_ms)
        await self._consumer.start()
        partition = TopicPartition(self.reply_topic, 0)
        self._consumer.assign([partition])
        self._consumer.seek(partition, 0)
        self._listener = asyncio.create_task(self._listen(), name="reply-listener")
        log.info("ingest instance %s listening for replies on %s", self.instance_id, self.reply_topic)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        for waiter in self._waiters.values():
            waiter.cancel()
        if self._consumer is not None:
            await self._consumer.stop()
        try:
            await delete_topics(self.settings.kafka_bootstrap, [self.reply_topic])
        except Exception as exc:  # noqa: BLE001 - shutting down: report and carry on
            log.warning("could not delete reply topic %s: %s", self.reply_topic, exc)
        if self._producer is not None:
            await self._producer.stop()

    async def _listen(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - broker hiccup: keep listening
                log.warning("reply consumer: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(1)
                continue
            for records in batches.values():
                for record in records:
                    self._deliver(record.value, record.headers)

    def _deliver(self, raw: bytes | None, headers=()) -> None:
        kind = dict(headers or ()).get("type")
        if kind == b"parked":
            self._note_parked(raw)
            return
        is_chunk = kind == b"chunk"
        try:
            message = (ChunkMessage if is_chunk else CompletionMessage).from_bytes(raw or b"")
        except (ValidationError, ValueError) as exc:
            log.warning("ignoring unreadable reply on %s: %s", self.reply_topic, exc)
            return
        stream = self._streams.get(message.request_id)
        if stream is not None:
            stream.put_nowait(message)
        if isinstance(message, ChunkMessage):
            return
        self._remember_conversation(message)
        waiter = self._waiters.get(message.request_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    def _note_parked(self, raw: bytes | None) -> None:
        try:
            notice = ParkedNotice.from_bytes(raw or b"")
        except (ValidationError, ValueError) as exc:
            log.warning("ignoring unreadable parked notice on %s: %s", self.reply_topic, exc)
            return
        if self.is_waiting(notice.request_id):  # kept only while someone waits: the map cannot grow unbounded
            self._parked[notice.request_id] = notice

    def _timeout(self, request_id: str, timeout_s: float) -> GenerateTimeout:
        return GenerateTimeout(request_id, timeout_s, parked=self._parked.get(request_id))

    def _remember_conversation(self, completion: CompletionMessage) -> None:
        key = conversation_key(completion.prompt.metadata, completion.prompt.user)
        if key is None or completion.status != "ok" or completion.final_model is None:
            return
        self._conversation_models.setdefault(key, set()).add(completion.final_model)
        self._conversation_models.move_to_end(key)
        while len(self._conversation_models) > _CONVERSATIONS_KEPT:
            self._conversation_models.popitem(last=False)

    def conversation_models(self, conversation_id: str, user: str | None) -> set[str]:
        """Models that answered this conversation's earlier turns through this process."""
        return set(self._conversation_models.get((conversation_id, user), ()))

    def _poll_for_replies(self) -> None:
        """Fetch replies with a short broker wait while a caller waits for one, and the usual wait otherwise.
        The local broker holds a fetch that found no data until its wait ends, so a reply that arrives meanwhile
        waits for it (the chunk's hop to this process: ~6 ms at 10 ms, ~5 ms at 2 ms, docs/benchmarks.md).
        Polling fast only while someone waits keeps an idle API process from polling the broker 500 times a
        second."""
        fetcher = getattr(self._consumer, "_fetcher", None)  # aiokafka reads this attribute for every fetch
        if fetcher is not None:
            waiting = bool(self._waiters or self._streams)
            fetcher._fetch_max_wait_ms = (self.settings.reply_fetch_max_wait_ms if waiting
                                          else self.settings.consumer_fetch_max_wait_ms)

    def is_waiting(self, request_id: str) -> bool:
        return request_id in self._waiters or request_id in self._streams

    async def stream(self, prompt: PromptMessage, timeout_s: float,
                     on_publish_error: Callable[[str], Awaitable[None]] | None = None,
                     ) -> AsyncIterator[ChunkMessage | CompletionMessage]:
        """Publish a streamed request and yield its chunks in ``seq`` order, then its completion. Raises
        GenerateTimeout when the completion has not come within ``timeout_s``. Closing the iterator (a client
        that went away) only stops listening: the request is still answered and recorded. ``on_publish_error``
        as for ``generate``."""
        prompt = prompt.model_copy(update={"reply_to": self.reply_topic, "stream": True})
        queue: asyncio.Queue[ChunkMessage | CompletionMessage] = asyncio.Queue()
        self._streams[prompt.request_id] = queue  # registered before publishing, so no reply can slip by
        self._poll_for_replies()
        deadline = time.monotonic() + timeout_s
        try:
            await self.publish(prompt, on_publish_error)
            expected, held = 0, {}
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), timeout=max(deadline - time.monotonic(), 0))
                except TimeoutError:
                    raise self._timeout(prompt.request_id, timeout_s) from None
                if isinstance(message, CompletionMessage):
                    if held:  # chunks lost on the way: what arrived still goes out in order
                        log.warning("stream %s: %d chunk(s) missing", prompt.request_id,
                                    message.streamed_chunks - expected - len(held))
                        for seq in sorted(held):
                            yield held[seq]
                    yield message
                    return
                if message.seq < expected:
                    continue  # a redelivered chunk
                held[message.seq] = message
                while expected in held:
                    yield held.pop(expected)
                    expected += 1
        finally:
            if self._streams.get(prompt.request_id) is queue:
                del self._streams[prompt.request_id]
            self._poll_for_replies()
            self._parked.pop(prompt.request_id, None)

    async def publish(self, prompt: PromptMessage,
                      on_error: Callable[[str], Awaitable[None]] | None = None) -> None:
        """Publish to the prompts topic, keyed by request id, and wait for the broker's ack. ``on_error`` runs
        (with the request id) when the broker does not take the prompt, before the error propagates.

        A request that names a configured model has nothing to classify: it goes straight to ``route.<model>``
        with its direct decision, a broker hop and the classify stage shorter (its first token comes ~10 ms
        sooner, docs/benchmarks.md); the provider agent adds the classifier's prediction while the model answers.
        """
        if self._producer is None:
            raise RuntimeError("bridge not started")
        topic, value = self.settings.topic_prompts, prompt.to_bytes()
        if prompt.requested_model and self.registry is not None:
            decision = direct_decision(prompt, self.registry)
            topic = route_topic(self.settings, decision.model)
            value = RoutedMessage(prompt=prompt, decision=decision, target_model=decision.model).to_bytes()
        try:
            await self._producer.send_and_wait(topic, key=prompt.request_id.encode(), value=value)
        except BaseException:
            if on_error is not None:
                await on_error(prompt.request_id)
            raise

    async def generate(self, prompt: PromptMessage, timeout_s: float,
                       on_publish_error: Callable[[str], Awaitable[None]] | None = None) -> CompletionMessage:
        """Publish with this process's reply topic and wait for that request's completion. ``on_publish_error``
        runs (with the request id) when the broker does not take the prompt, before the error propagates."""
        prompt = prompt.model_copy(update={"reply_to": self.reply_topic})
        waiter: asyncio.Future[CompletionMessage] = asyncio.get_running_loop().create_future()
        self._waiters[prompt.request_id] = waiter  # registered before publishing, so no reply can slip by
        self._poll_for_replies()
        try:
            await self.publish(prompt, on_publish_error)
            try:
                return await asyncio.wait_for(waiter, timeout=timeout_s)
            except TimeoutError:
                raise self._timeout(prompt.request_id, timeout_s) from None
        finally:
            if self._waiters.get(prompt.request_id) is waiter:
                del self._waiters[prompt.request_id]
            self._poll_for_replies()
            self._parked.pop(prompt.request_id, None)

    async def broker_ok(self, timeout_s: float = 3.0) -> bool:
        if self._producer is None:
            return False
        try:
            return bool(await asyncio.wait_for(self._producer.client.force_metadata_update(), timeout=timeout_s))
        except Exception:  # noqa: BLE001 - health check: any failure is "down"
            return False
