"""Repeated failures are logged once per interval, with a count of what was held back."""

from __future__ import annotations

import logging

from core.logs import RateLimitedLog, RepeatFilter


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_repeat_filter_lets_one_record_per_template_through_per_interval(caplog):
    clock = Clock()
    logger = logging.getLogger("aiokafka.test-repeat")
    logger.addFilter(RepeatFilter(every_s=30, clock=clock))
    with caplog.at_level(logging.WARNING, logger="aiokafka.test-repeat"):
        for _ in range(500):
            logger.error("Unable connect to node with id %s", 111)
        logger.error("a different error")
        clock.now = 31
        logger.error("Unable connect to node with id %s", 111)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["Unable connect to node with id 111", "a different error",
                        "Unable connect to node with id 111 (499 more like it in the last 30s)"]


def test_rate_limited_log_counts_and_clears(caplog):
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("router.test"), every_s=10, clock=clock)
    with caplog.at_level(logging.INFO, logger="router.test"):
        assert limited.warning("db", "heartbeat failed: %s", "down")
        assert not limited.warning("db", "heartbeat failed: %s", "down")
        clock.now = 11
        assert limited.warning("db", "heartbeat failed: %s", "down")
        limited.clear("db")
        assert limited.warning("db", "heartbeat failed: %s", "down")
    assert [r.getMessage() for r in caplog.records] == [
        "heartbeat failed: down", "heartbeat failed: down (1 more like it in the last 10s)", "db: recovered",
        "heartbeat failed: down"]
