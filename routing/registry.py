"""Name -> class for the routing policies (RouteLLM-style registry); add a new policy here."""

from __future__ import annotations

from typing import Any

from routing.cascade_policy import CascadePolicy
from routing.policy import RoutingPolicy, ThresholdPolicy
from routing.pool_policy import PoolPolicy

POLICIES: dict[str, type[RoutingPolicy]] = {cls.name: cls for cls in (ThresholdPolicy, CascadePolicy, PoolPolicy)}


def build_policy(name: str, **kwargs: Any) -> RoutingPolicy:
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown routing policy {name!r}; known: {sorted(POLICIES)}") from None
    return cls(**kwargs)
