"""Prometheus metrics of a Faust worker (prometheus_client), served on ``worker_metrics_port`` when set.

Built per process by ``WorkerMetrics(registry)``, never at import, so tests can build their own.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from core.messages import CompletionMessage

log = logging.getLogger(__name__)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.completions = Counter("router_completions_total", "Requests answered or failed, by final status",
                                   ["status", "model"], registry=self.registry)
        self.cost = Counter("router_cost_micro_usd_total", "Spend on model calls, micro-USD", ["model"],
                            registry=self.registry)
        self.calls = Counter("router_model_calls_total", "Calls to a model, by outcome", ["model", "status"],
                             registry=self.registry)
        self.retries = Counter("router_model_retries_total", "HTTP retries inside model calls", ["model"],
                               registry=self.registry)
        self.fallbacks = Counter("router_fallbacks_total", "Moves up the ladder after a model error, by the kind of "
                                 "reason (error, timeout, circuit_open)", ["model", "kind"], registry=self.registry)
        self.latency = Histogram("router_request_latency_seconds", "Time spent calling models per request",
                                 registry=self.registry,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.dead_letters = Counter("router_dead_letters_total", "Messages sent to the dead-letter topic", ["stage"],
                                    registry=self.registry)
        self.republished = Counter("router_republished_total",
                                   "Accepted requests republished by the reconciler", registry=self.registry)
        self.reused = Counter("router_redeliveries_not_called_total",
                              "Redelivered requests answered from Postgres or in flight here, without a model call",
                              ["where"], registry=self.registry)
        self.expired = Counter("router_expired_total", "Accepted requests recorded as expired",
                               registry=self.registry)
        self.consumer_lag = Gauge("router_consumer_lag", "Messages behind per assigned partition, as of the last "
                                  "heartbeat", ["topic", "partition"], registry=self.registry)
        self.parked = Counter("router_parked_total", "Requests parked until a retry because their allowed models "
                              "were down, by routed model", ["model"], registry=self.registry)
        self.unparked = Counter("router_unparked_total", "Parked requests published back to their route topic",
                                registry=self.registry)

    def set_lag(self, lag: dict[str, dict[int, int]]) -> None:
        """The gauge holds exactly the partitions assigned now (a revoked one is dropped, not left stale)."""
        self.consumer_lag.clear()
        for topic, partitions in lag.items():
            for partition, behind in partitions.items():
                self.consumer_lag.labels(topic, str(partition)).set(behind)

    def observe_completion(self, completion: CompletionMessage) -> None:
        self.completions.labels(completion.status, completion.final_model or "none").inc()
        for attempt in completion.attempts:
            self.calls.labels(attempt.model, attempt.status).inc()
            self.cost.labels(attempt.model).inc(attempt.cost_micro_usd)
            if attempt.retries:
                self.retries.labels(attempt.model).inc(attempt.retries)
            if attempt.status == "error" and attempt.next_model:
                self.fallbacks.labels(attempt.model, attempt.next_reason_kind or "error").inc()
        self.latency.observe(completion.latency_ms / 1000)

    def serve(self, port: int) -> None:
        start_http_server(port, addr="0.0.0.0", registry=self.registry)
        log.info("worker metrics on :%d/metrics", port)
