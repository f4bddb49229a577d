"""The circuit breaker: opens after consecutive outages, lets one call through after the cooldown."""

from __future__ import annotations

from providers.health import CircuitBreaker, is_outage


def test_outages_are_timeouts_429_and_5xx() -> None:
    assert is_outage(None) and is_outage(429) and is_outage(500) and is_outage(503)
    assert not is_outage(400) and not is_outage(404)


def test_opens_after_threshold_and_half_opens_after_cooldown() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=10, clock=lambda: now[0])
    breaker.record_failure("m", 500)
    breaker.record_failure("m", 404)  # about the request, not the model: not counted
    breaker.record_failure("m", None)
    assert not breaker.is_open("m")
    breaker.record_failure("m", 429)
    assert breaker.is_open("m") and breaker.consecutive_failures("m") == 3
    now[0] = 10.0
    assert not breaker.is_open("m")  # half-open: one call may try
    breaker.record_failure("m", 502)
    assert breaker.is_open("m")  # failed again: open for another cooldown
    now[0] = 20.0
    breaker.record_success("m")
    assert not breaker.is_open("m") and breaker.consecutive_failures("m") == 0


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2)
    breaker.record_failure("m", 500)
    breaker.record_success("m")
    breaker.record_failure("m", 500)
    assert not breaker.is_open("m")
