"""Worker metrics count completions, cost, calls and fallbacks by structured reason."""

from __future__ import annotations

from prometheus_client import generate_latest

from core.messages import Attempt, Tier
from stream_processors.metrics import WorkerMetrics
from tests.sql.test_repository import make_completion


def test_a_completion_is_counted_with_its_cost_and_fallbacks():
    metrics = WorkerMetrics()
    completion = make_completion("r1", attempts=2)
    failed = Attempt(model="phi-3-mini", tier=Tier.cheap, status="error", retries=2)
    failed.record_next("llama-3-70b", "circuit_open", "circuit open")
    completion.attempts = [failed, completion.attempts[-1]]
    metrics.observe_completion(completion)
    text = generate_latest(metrics.registry).decode()
    assert 'router_completions_total{model="llama-3-70b",status="ok"} 1.0' in text
    assert 'router_cost_micro_usd_total{model="llama-3-70b"} 6.0' in text
    assert 'router_fallbacks_total{kind="circuit_open",model="phi-3-mini"} 1.0' in text
    assert 'router_model_retries_total{model="phi-3-mini"} 2.0' in text
