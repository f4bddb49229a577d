"""Experiment arms: deterministic, sticky assignment with the configured shares; control, router and refresh."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from classifier.registry import CLASSIFIERS
from core.messages import PromptMessage, Tier
from core.registry import ModelRegistry, ModelSpec, Prices
from routing.experiments import Arm, ArmRouter, Experiment, ExperimentBook, bucket
from routing.registry import build_policy
from routing.router import Router

REGISTRY = ModelRegistry(models=[
    ModelSpec(name="small", tier=Tier.cheap, prices=Prices(input=0.1, output=0.4)),
    ModelSpec(name="medium", tier=Tier.mid, prices=Prices(input=0.5, output=0.8)),
    ModelSpec(name="big", tier=Tier.expensive, prices=Prices(input=2.5, output=10.0)),
])


def experiment(control: float = 0.1, router: float = 0.1, **extra) -> Experiment:
    return Experiment(experiment_id="exp-1", salt="pepper", arms=[
        Arm(name="control", kind="control", share=control, model="big"),
        Arm(name="router", kind="router", share=router)], **extra)


def default_router() -> Router:
    return Router(CLASSIFIERS["heuristic"](), build_policy("threshold"), REGISTRY)


def test_a_user_always_gets_the_same_arm_and_shares_match_the_configuration() -> None:
    exp = experiment(0.1, 0.1)
    counts = {"control": 0, "router": 0, None: 0}
    users = 20_000
    for u in range(users):
        arms = {getattr(exp.assign(PromptMessage(prompt=f"q{k}", user=f"user-{u}")), "name", None) for k in range(3)}
        assert len(arms) == 1  # three different requests of one user: one arm
        counts[arms.pop()] += 1
    for arm, share in (("control", 0.1), ("router", 0.1), (None, 0.8)):
        sd = math.sqrt(users * share * (1 - share))
        assert abs(counts[arm] - users * share) < 4 * sd, (arm, counts)


def test_assignment_depends_on_salt_and_tenant() -> None:
    assert bucket("a", "t", "user:1") == bucket("a", "t", "user:1")
    assert bucket("a", "t", "user:1") != bucket("b", "t", "user:1")
    assert bucket("a", "t", "user:1") != bucket("a", "u", "user:1")
    assert 0 <= bucket("a", "t", "user:1") < 1


def test_conversation_unit_and_fallback_to_the_request() -> None:
    exp = experiment(0.5, 0.5, unit="conversation")
    a = [exp.assign(PromptMessage(prompt="x", user=f"u{i}", metadata={"conversation_id": "c-1"})).name
         for i in range(20)]
    assert len(set(a)) == 1  # one conversation, many users: one arm
    anonymous = {exp.assign(PromptMessage(prompt="x")).name for _ in range(60)}
    assert anonymous == {"control", "router"}  # no user, no conversation: each request on its own


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(ValidationError, match="more than 1"):
        experiment(0.6, 0.6)
    with pytest.raises(ValidationError, match="names a model"):
        Arm(name="c", kind="control", share=0.1)
    with pytest.raises(ValidationError, match="artifact folder"):
        Arm(name="c", kind="artifact", share=0.1)
    with pytest.raises(ValidationError, match="repeat"):
        Experiment(experiment_id="e", salt="s", arms=[Arm(name="a", kind="router", share=0.1)] * 2)
    bad = Experiment(experiment_id="e", salt="s", arms=[Arm(name="c", kind="control", share=0.1, model="nope")])
    with pytest.raises(ValueError, match="names model 'nope'"):
        bad.validate_for(REGISTRY)


def test_arm_router_records_arm_and_version_and_control_always_uses_its_model() -> None:
    book = ExperimentBook(lambda: [experiment(0.5, 0.5)])
    router = ArmRouter(default_router(), REGISTRY, book)
    prompts = [PromptMessage(prompt="What is 2 + 2?", user=f"user-{i}") for i in range(200)]
    decisions = router.route(prompts)
    by_arm = {}
    for decision in decisions:
        assert decision.experiment_id == "exp-1"
        by_arm.setdefault(decision.arm, []).append(decision)
    assert set(by_arm) == {"control", "router"}
    for decision in by_arm["control"]:
        assert decision.model == "big" and not decision.escalate and decision.router_version == "control:big"
    for decision in by_arm["router"]:
        assert decision.model == "small" and decision.escalate and decision.router_version == "heuristic:threshold"


def test_a_request_naming_its_model_is_in_no_arm_and_keeps_its_model() -> None:
    router = ArmRouter(default_router(), REGISTRY, ExperimentBook(lambda: [experiment(1.0, 0.0)]))
    routed, named = router.route([PromptMessage(prompt="What is 2 + 2?", user="u"),
                                  PromptMessage(prompt="What is 2 + 2?", user="u", requested_model="small")])
    assert (routed.arm, routed.model) == ("control", "big")  # the whole share is the control arm
    assert (named.arm, named.experiment_id, named.model, named.policy) == (None, None, "small", "direct")
    assert named.label == "simple" and named.classifier == "heuristic"  # its prediction is still recorded


def test_unassigned_traffic_and_no_experiment_route_as_usual() -> None:
    router = ArmRouter(default_router(), REGISTRY, ExperimentBook(lambda: []))
    decision = router.route([PromptMessage(prompt="hello", user="u")])[0]
    assert decision.arm is None and decision.experiment_id is None and decision.router_version == "heuristic:threshold"


def test_a_candidate_that_cannot_load_sends_its_arm_to_the_default_router_without_an_arm() -> None:
    exp = Experiment(experiment_id="e", salt="s", arms=[Arm(name="cand", kind="artifact", share=1.0, artifact="/no")])

    def load(path: str) -> Router:
        raise FileNotFoundError(path)

    router = ArmRouter(default_router(), REGISTRY, ExperimentBook(lambda: [exp]), load_candidate=load)
    decision = router.route([PromptMessage(prompt="hello", user="u")])[0]
    assert decision.arm is None and decision.model == "small"


def test_the_book_rereads_within_its_refresh_interval_and_keeps_the_last_on_errors() -> None:
    now = [0.0]
    current = [[experiment(1.0, 0.0)]]

    def load():
        if current[0] is None:
            raise OSError("database down")
        return current[0]

    book = ExperimentBook(load, refresh_s=5.0, clock=lambda: now[0])
    assert book.experiment_for("default").arms[0].share == 1.0
    current[0] = [experiment(0.0, 1.0)]
    now[0] = 4.9
    assert book.experiment_for("default").arms[0].share == 1.0  # not yet re-read
    now[0] = 5.0
    assert book.experiment_for("default").arms[0].share == 0.0  # re-read at the bound
    current[0] = None
    now[0] = 10.0
    assert book.experiment_for("default").arms[0].share == 0.0  # read failed: the last experiments stay
    current[0] = []
    now[0] = 15.0
    assert book.experiment_for("default") is None  # ended


def test_a_tenants_own_experiment_wins_over_the_global_one() -> None:
    own = experiment().model_copy(update={"experiment_id": "own", "tenant": "acme"})
    book = ExperimentBook(lambda: [experiment(), own])
    assert book.experiment_for("acme").experiment_id == "own"
    assert book.experiment_for("other").experiment_id == "exp-1"
