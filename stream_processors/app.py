"""The Faust app, built by a factory (nothing is created at import time)."""

from __future__ import annotations

import faust

from core.settings import Settings, get_settings
from stream_processors.agents import classify, feedback, provider, sink
from stream_processors.context import PipelineContext
from stream_processors.runtime import Runtime, build_runtime


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


def set_consumer_fetch_wait(max_wait_ms: int) -> None:
    """Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no setting to change it; set the
    consumer's value before it starts (its fetcher reads it at start)."""
    from faust.transport.drivers import aiokafka as faust_aiokafka  # noqa: PLC0415

    thread_cls = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(thread_cls, "_router_original_create_worker_consumer", thread_cls._create_worker_consumer)

    def create_worker_consumer(self, transport):
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms
        return consumer

    thread_cls._router_original_create_worker_consumer = original
    thread_cls._create_worker_consumer = create_worker_consumer


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> faust.App:
    """The worker app: classify, one provider agent per configured model, and the sink."""
    settings = settings or get_settings()
    runtime = runtime or build_runtime(settings)
    settings.faust_data_dir.mkdir(parents=True, exist_ok=True)
    set_consumer_fetch_wait(settings.consumer_fetch_max_wait_ms)
    app = faust.App(
        settings.faust_app_id,
        broker=broker_urls(settings.kafka_bootstrap),
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        # State lives in Postgres; agents are stateless and at-least-once (the sink is idempotent).
        processing_guarantee="at_least_once",
        store="memory://",
        datadir=str(settings.faust_data_dir),
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=settings.broker_heartbeat_interval_s,
        consumer_auto_offset_reset="earliest",
        # No leader election topic: the agents need none, and it is one more topic to keep alive.
        topic_disable_leader=True,
        # Topics are created up front at their final partition counts (python -m stream_processors create-topics).
        topic_allow_declare=False,
        web_enabled=False,
    )
    context = PipelineContext(app, settings, runtime)
    app.add_dependency(context)
    classify.register(app, context)
    for spec in runtime.registry.models:
        provider.register(app, context, spec)
    sink.register(app, context)
    feedback.register(app, context)
    return app
