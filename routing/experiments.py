"""Online experiments: deterministic arm assignment and routing by arm.

An experiment gives each arm a share of traffic. A request's arm is picked from a salted hash of its
tenant and its user (or conversation, or request) id, so one user stays in one arm for as long as the
shares stay the same. Arms:

- ``control``: always one named model (the "always Llama-3" or "always expensive" baseline). It answers
  alone: a failing call still falls back, but an answer is never escalated.
- ``router``: the default router (the worker's artifact or heuristic), exactly like unassigned traffic.
- ``artifact``: a candidate router loaded from another artifact folder, with that artifact's answer checks.

Traffic outside every arm's share is routed by the default router and recorded without an arm. The
experiments are read from Postgres (``experiments`` table) by an :class:`ExperimentBook` that re-reads
them at most every ``refresh_s`` seconds, so changing shares or ending an experiment needs no restart.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.messages import PromptMessage, RoutingDecision
from core.registry import ModelRegistry
from routing.router import Router

log = logging.getLogger(__name__)

NAME_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
ArmKind = Literal["control", "router", "artifact"]
Unit = Literal["user", "conversation", "request"]


class Arm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    kind: ArmKind
    share: float = Field(ge=0.0, le=1.0)
    model: str | None = None
    artifact: str | None = None

    @model_validator(mode="after")
    def _fields_match_kind(self) -> Arm:
        if self.kind == "control" and (not self.model or self.artifact):
            raise ValueError(f"arm {self.name!r}: a control arm names a model (and no artifact)")
        if self.kind == "artifact" and (not self.artifact or self.model):
            raise ValueError(f"arm {self.name!r}: an artifact arm names an artifact folder (and no model)")
        if self.kind == "router" and (self.model or self.artifact):
            raise ValueError(f"arm {self.name!r}: a router arm uses the default router (no model, no artifact)")
        return self


class Experiment(BaseModel):
    model_config = ConfigDict(extra="ignore")

    experiment_id: str = Field(pattern=NAME_PATTERN)
    tenant: str | None = None
    salt: str = Field(min_length=1)
    unit: Unit = "user"
    arms: list[Arm] = Field(min_length=1)
    description: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    ended_at: datetime | None = None

    @model_validator(mode="after")
    def _arms_fit(self) -> Experiment:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.experiment_id!r}: arm names repeat: {names}")
        total = sum(arm.share for arm in self.arms)
        if total > 1.0 + 1e-9:
            raise ValueError(f"experiment {self.experiment_id!r}: arm shares add up to {total:g}, more than 1")
        return self

    def validate_for(self, registry: ModelRegistry) -> None:
        """Raise ValueError when a control arm names a model the registry does not have."""
        known = {spec.name for spec in registry.models}
        for arm in self.arms:
            if arm.kind == "control" and arm.model not in known:
                raise ValueError(f"experiment {self.experiment_id!r}: control arm {arm.name!r} names model "
                                 f"{arm.model!r}; configured: {sorted(known)}")

    def assign(self, prompt: PromptMessage) -> Arm | None:
        """The prompt's arm, or None when its bucket falls outside every arm's share."""
        point = bucket(self.salt, prompt.tenant, unit_id(prompt, self.unit))
        edge = 0.0
        for arm in self.arms:
            edge += arm.share
            if point < edge:
                return arm
        return None


def conversation_id(prompt: PromptMessage) -> str | None:
    return getattr(prompt, "conversation_id", None) or prompt.metadata.get("conversation_id")


def unit_id(prompt: PromptMessage, unit: Unit) -> str:
    """The id the arm is hashed on. A prompt without a user (or conversation) is assigned by the other one,
    else by its request id: still a fair random assignment, only not sticky."""
    if unit == "request":
        return f"request:{prompt.request_id}"
    order = (prompt.user, conversation_id(prompt)) if unit == "user" else (conversation_id(prompt), prompt.user)
    kinds = ("user", "conversation") if unit == "user" else ("conversation", "user")
    for kind, value in zip(kinds, order, strict=True):
        if value:
            return f"{kind}:{value}"
    return f"request:{prompt.request_id}"


def bucket(salt: str, tenant: str, unit: str) -> float:
    """A uniform point in [0, 1) from the salted hash: the same inputs always give the same point."""
    digest = hashlib.sha256(f"{salt}\x00{tenant}\x00{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class ExperimentBook:
    """The running experiments, re-read through ``loader`` at most every ``refresh_s`` seconds.

    A failed read keeps the experiments last read (and is retried after another ``refresh_s``): a database
    hiccup must not silently move users between arms."""

    def __init__(self, loader: Callable[[], list[Experiment]], refresh_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.loader = loader
        self.refresh_s = refresh_s
        self.clock = clock
        self._by_tenant: dict[str | None, Experiment] = {}
        self._loaded_at: float | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        experiments = self.loader()
        self._by_tenant = {experiment.tenant: experiment for experiment in experiments}

    def _refresh_if_stale(self) -> None:
        with self._lock:
            now = self.clock()
            if self._loaded_at is not None and now - self._loaded_at < self.refresh_s:
                return
            self._loaded_at = now
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - keep the last experiments; retried after refresh_s
                log.warning("could not read the experiments (keeping the last ones read): %s: %s",
                            type(exc).__name__, exc)

    def experiment_for(self, tenant: str) -> Experiment | None:
        """The tenant's own running experiment, else the one for every tenant, else None."""
        self._refresh_if_stale()
        return self._by_tenant.get(tenant) or self._by_tenant.get(None)


class ArmRouter:
    """Routes a batch of prompts by their experiment arms; the classify stage, and shadow replay, use it."""

    def __init__(self, default: Router, registry: ModelRegistry, book: ExperimentBook | None = None,
                 load_candidate: Callable[[str], Router] | None = None) -> None:
        self.default = default
        self.registry = registry
        self.book = book
        self.load_candidate = load_candidate
        self._candidates: dict[str, Router | None] = {}
        self._lock = threading.Lock()

    def candidate(self, artifact: str) -> Router | None:
        """The candidate router of an artifact arm, loaded once; None (logged once) when it cannot load."""
        with self._lock:
            if artifact not in self._candidates:
                router = None
                if self.load_candidate is None:
                    log.error("artifact arm %s: this router loads no candidate artifacts", artifact)
                else:
                    try:
                        router = self.load_candidate(artifact)
                    except Exception as exc:  # noqa: BLE001 - its prompts go to the default router, unassigned
                        log.error("artifact arm %s cannot be loaded; its prompts are routed by the default "
                                  "router without an arm: %s: %s", artifact, type(exc).__name__, exc)
                self._candidates[artifact] = router
            return self._candidates[artifact]

    def assign(self, prompt: PromptMessage) -> tuple[Experiment, Arm] | None:
        # A request that names its model is not in any arm: a control arm would otherwise answer it with another
        # model. Its own record (policy "direct", with the classifier's prediction) is what a team A/Bs later.
        if self.book is None or prompt.requested_model:
            return None
        experiment = self.book.experiment_for(prompt.tenant)
        if experiment is None:
            return None
        arm = experiment.assign(prompt)
        if arm is None:
            return None
        if arm.kind == "control" and arm.model not in {spec.name for spec in self.registry.models}:
            log.error("experiment %s: control arm %s names unknown model %r; routed without an arm",
                      experiment.experiment_id, arm.name, arm.model)
            return None
        if arm.kind == "artifact" and self.candidate(arm.artifact or "") is None:
            return None
        return experiment, arm

    def route(self, prompts: Sequence[PromptMessage]) -> list[RoutingDecision]:
        assignments = [self.assign(prompt) for prompt in prompts]
        decisions: list[RoutingDecision | None] = [None] * len(prompts)
        # Group by the router that decides: the default one (router and control arms, unassigned) or a candidate.
        groups: dict[str | None, list[int]] = {}
        for i, assignment in enumerate(assignments):
            artifact = assignment[1].artifact if assignment and assignment[1].kind == "artifact" else None
            groups.setdefault(artifact, []).append(i)
        for artifact, rows in groups.items():
            router = self.default if artifact is None else self.candidate(artifact)
            assert router is not None  # assign() dropped arms whose candidate cannot load
            for i, decision in zip(rows, router.route([prompts[i] for i in rows]), strict=True):
                decisions[i] = decision
        out: list[RoutingDecision] = []
        for decision, assignment in zip(decisions, assignments, strict=True):
            assert decision is not None
            if assignment is not None:
                experiment, arm = assignment
                decision.experiment_id, decision.arm = experiment.experiment_id, arm.name
                if arm.kind == "control":
                    decision = self.control_decision(decision, experiment, arm)
            out.append(decision)
        return out

    def control_decision(self, decision: RoutingDecision, experiment: Experiment, arm: Arm) -> RoutingDecision:
        spec = self.registry.get(arm.model or "")
        return decision.model_copy(update={
            "model": spec.name, "tier": spec.tier, "policy": f"control:{spec.name}",
            "reasons": [f"experiment {experiment.experiment_id} arm {arm.name}: always {spec.name}"],
            "max_output_tokens": {}, "router_version": f"control:{spec.name}", "artifact": None, "escalate": False,
        })
