"""A worker's consumer lag: fetch high watermark minus committed offset, per assigned partition."""

from __future__ import annotations

from types import SimpleNamespace

from faust.types import TP

from core.settings import Settings
from stream_processors.metrics import WorkerMetrics
from stream_processors.reconciler import WorkerDuties


def _duties(assigned: set[TP], end: dict[TP, int], committed: dict[TP, int]) -> WorkerDuties:
    monitor = SimpleNamespace(tp_end_offsets=end, tp_committed_offsets=committed)
    app = SimpleNamespace(consumer=SimpleNamespace(assignment=lambda: assigned), monitor=monitor)
    return WorkerDuties(SimpleNamespace(settings=Settings(_env_file=None), app=app))


def test_lag_per_assigned_partition() -> None:
    a0, a1, a2, b0 = TP("prompts", 0), TP("prompts", 1), TP("prompts", 2), TP("route.small", 0)
    duties = _duties({a0, a1, a2, b0}, end={a0: 120, a1: 40, b0: 7, TP("revoked", 0): 99},
                     committed={a0: 100, a1: 40})
    # a2 never fetched from: its end is unknown, so it is left out; b0 has nothing committed yet: all 7 behind.
    assert duties.lag() == {"prompts": {0: 20, 1: 0}, "route.small": {0: 7}}


def test_the_lag_gauge_holds_only_partitions_assigned_now() -> None:
    metrics = WorkerMetrics()
    metrics.set_lag({"prompts": {0: 20, 1: 0}})
    metrics.set_lag({"prompts": {1: 3}})
    samples = {(s.labels["topic"], s.labels["partition"]): s.value
               for s in metrics.consumer_lag.collect()[0].samples}
    assert samples == {("prompts", "1"): 3}
