"""The parking backoff: exponential with jitter, growing to its cap, and the last retry placed before the deadline."""

from __future__ import annotations

from datetime import timedelta

from core.messages import CompletionMessage, PromptMessage, RoutedMessage, RoutingDecision, Tier, utcnow
from core.settings import Settings
from stream_processors.parking import Backoff, Parking


def _routed(parks: int, deadline_in_s: float) -> RoutedMessage:
    prompt = PromptMessage(prompt="What is 2 plus 2?", deadline_at=utcnow() + timedelta(seconds=deadline_in_s))
    decision = RoutingDecision(label="simple", confidence=0.9, probabilities={"simple": 0.9}, model="small",
                               tier=Tier.cheap, reasons=["test"], policy="threshold", classifier="test")
    return RoutedMessage(prompt=prompt, decision=decision, target_model="small", parks=parks)


def _backoff(**overrides) -> Backoff:
    return Backoff(Settings(_env_file=None).model_copy(update={
        "park_initial_s": 1.0, "park_max_s": 30.0, "park_sweep_interval_s": 1.0, **overrides}))


def test_delays_double_with_jitter_up_to_the_cap():
    backoff = _backoff()
    for parks, base in ((0, 1), (1, 2), (2, 4), (3, 8), (4, 16)):
        delays = {backoff.delay_s(parks) for _ in range(20)}
        assert all(base <= d <= base + 1 for d in delays), (parks, delays)
        assert len(delays) > 1  # jittered: parked requests do not all come back at the same instant
    assert {backoff.delay_s(10) for _ in range(5)} == {30.0}


def test_the_last_retry_comes_before_the_deadline_and_none_after_it():
    backoff = _backoff()
    now = utcnow()
    far = _routed(parks=3, deadline_in_s=600)
    assert timedelta(seconds=8) <= backoff.next_retry(far, now) - now <= timedelta(seconds=9)
    near = _routed(parks=8, deadline_in_s=5)  # a 30 s wait would pass the deadline: retry just before it
    retry = backoff.next_retry(near, now)
    assert retry is not None and retry <= near.prompt.deadline_at - timedelta(seconds=1)
    assert backoff.next_retry(_routed(parks=1, deadline_in_s=0.5), now) is None  # no time left: fail now
    assert _backoff(park_enabled=False).next_retry(far, now) is None


class _Context:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings


def _failed(routed: RoutedMessage, *, retryable: bool) -> CompletionMessage:
    return CompletionMessage(request_id=routed.prompt.request_id, prompt=routed.prompt, decision=routed.decision,
                             attempts=routed.attempts, status="failed", final_model=None, response=None,
                             error="small: 503", retryable=retryable)


async def test_past_its_deadline_a_parked_request_fails_for_good_saying_how_long_it_was_retried():
    settings = Settings(_env_file=None).model_copy(update={"pg_dsn": "postgresql://unused/db"})
    parking = Parking(_Context(settings))
    late = _routed(parks=6, deadline_in_s=0.5)
    final = await parking.park_or_give_up(late, _failed(late, retryable=True))
    assert final is not None and final.status == "failed"
    assert "retried until its deadline" in final.error and "parked 6 times" in final.error
    # A failure no retry can mend is published as it is, whatever the deadline.
    fresh = _routed(parks=0, deadline_in_s=600)
    refused = _failed(fresh, retryable=False)
    assert await parking.park_or_give_up(fresh, refused) is refused
