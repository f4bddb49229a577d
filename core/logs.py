"""Rate-limited logging for failures that repeat while something is down (a broker, a database)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """Logs a failure under ``key`` once, then at most once per ``every_s`` with how many were held back.
    A broker that is down for two minutes gives a handful of lines instead of megabytes."""

    def __init__(self, logger: logging.Logger, every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held_back: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> bool:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._held_back[key] = self._held_back.get(key, 0) + 1
            return False
        held_back = self._held_back.pop(key, 0)
        self._last[key] = now
        suffix = f" ({held_back} more like it in the last {self.every_s:g}s)" if held_back else ""
        self.logger.warning(message + suffix, *args)
        return True

    def clear(self, key: str) -> None:
        """The failure is over: the next one is logged at once."""
        if self._last.pop(key, None) is not None:
            self.logger.info("%s: recovered", key)
        self._held_back.pop(key, None)


class RepeatFilter(logging.Filter):
    """A logging filter that lets one record per message template through every ``every_s`` and notes how many
    it held back. Installed on the Kafka client's loggers: a broker that is down makes aiokafka log the same
    connection error many times a second."""

    def __init__(self, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._held_back: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._held_back[key] = self._held_back.get(key, 0) + 1
            return False
        self._last[key] = now
        held_back = self._held_back.pop(key, 0)
        if held_back:
            record.msg = f"{record.msg} ({held_back} more like it in the last {self.every_s:g}s)"
        return True


def quiet_repeated_kafka_errors(every_s: float = 30.0) -> RepeatFilter:
    """Rate-limit the Kafka client's (and the Postgres pool's) repeated warnings and errors in this process."""
    repeat = RepeatFilter(every_s)
    for name in ("aiokafka", "aiokafka.conn", "aiokafka.client", "aiokafka.consumer.fetcher",
                 "aiokafka.consumer.group_coordinator", "aiokafka.producer.sender", "faust.transport.drivers.aiokafka",
                 "psycopg.pool"):
        logging.getLogger(name).addFilter(repeat)
    return repeat
