"""Builds the router the live classify agent, the offline harness and replay share."""

from __future__ import annotations

import logging
from pathlib import Path

from classifier.base import Classifier
from classifier.cascade import Escalation
from classifier.heuristic import HeuristicClassifier
from classifier.policy import TokenCounter, approximate_token_count, build_policy
from classifier.router import Router
from providers.registry import ModelRegistry

log = logging.getLogger(__name__)


def build_router(
    registry: ModelRegistry,
    artifact_dir: Path | None = None,
    policy_name: str = "threshold",
    token_counter: TokenCounter = approximate_token_count,
) -> Router:
    """The trained classifier and calibrated policy from ``artifact_dir``, or else the seed heuristic."""
    if artifact_dir is not None and Path(artifact_dir).exists():
        from classifier.artifact import load_router_from_artifact  # noqa: PLC0415 - optional, built by training

        return load_router_from_artifact(Path(artifact_dir), registry, token_counter=token_counter)
    log.warning(
        "NO CLASSIFIER ARTIFACT%s: routing with the seed's keyword/length heuristic. "
        "Train one with `python -m training.train` and set ROUTER_CLASSIFIER_ARTIFACT.",
        f" at {artifact_dir}" if artifact_dir else "",
    )
    classifier: Classifier = HeuristicClassifier()
    policy = build_policy(policy_name, token_counter=token_counter)
    return Router(classifier, policy, registry, Escalation(registry))
