"""Per-model circuit breaker: a model that keeps failing is skipped for a while, so requests fall back at once
instead of each one waiting out its timeouts and retries.

Only failures that say the model is unwell count (timeouts, connection errors, 429 and 5xx). A 4xx such
as a replay's "unknown prompt" or a bad request is about the request, not the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


def is_outage(status: int | None) -> bool:
    """Whether a failed call's HTTP status (None: no response at all) points at the model being unwell."""
    return status is None or status == 429 or status >= 500


@dataclass
class _State:
    consecutive_failures: int = 0
    open_until: float = 0.0


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._states: dict[str, _State] = {}

    def is_open(self, model: str) -> bool:
        """True while the model is being skipped. After the cooldown one call goes through (half-open):
        a success closes the circuit, a failure opens it again."""
        state = self._states.get(model)
        return state is not None and self._clock() < state.open_until

    def record_success(self, model: str) -> None:
        self._states.pop(model, None)

    def record_failure(self, model: str, status: int | None) -> None:
        if not is_outage(status):
            return
        state = self._states.setdefault(model, _State())
        state.consecutive_failures += 1
        if state.consecutive_failures >= self.failure_threshold:
            state.open_until = self._clock() + self.cooldown_s

    def consecutive_failures(self, model: str) -> int:
        state = self._states.get(model)
        return state.consecutive_failures if state else 0
