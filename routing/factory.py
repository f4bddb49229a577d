"""Builds the router and the escalation that the live pipeline, the offline harness and replay share."""

from __future__ import annotations

import logging
from pathlib import Path

from classifier.registry import CLASSIFIERS
from core.registry import ModelRegistry
from routing.artifact import artifact_digest, load_escalation_from_artifact, load_router_from_artifact
from routing.escalation import Escalation
from routing.policy import TokenCounter, approximate_token_count
from routing.registry import build_policy
from routing.router import Router

log = logging.getLogger(__name__)


def _has_artifact(artifact_dir: Path | None) -> bool:
    return artifact_dir is not None and Path(artifact_dir).exists()


def build_router(
    registry: ModelRegistry,
    artifact_dir: Path | None = None,
    policy_name: str = "threshold",
    token_counter: TokenCounter = approximate_token_count,
    *,
    allow_mismatch: bool = False,
) -> Router:
    """The trained classifier and calibrated policy from ``artifact_dir``, or else the seed heuristic.
    An artifact calibrated for other models than the registry's is refused unless ``allow_mismatch``."""
    if _has_artifact(artifact_dir):
        router = load_router_from_artifact(Path(artifact_dir), registry, token_counter=token_counter,
                                           allow_mismatch=allow_mismatch)
        router.version = artifact_version(Path(artifact_dir))
        router.artifact = str(artifact_dir)
        return router
    log.warning(
        "NO CLASSIFIER ARTIFACT%s: routing with the seed's keyword/length heuristic. "
        "Train one with `python -m training.train` and set ROUTER_CLASSIFIER_ARTIFACT.",
        f" at {artifact_dir}" if artifact_dir else "",
    )
    policy = build_policy(policy_name, token_counter=token_counter)
    return Router(CLASSIFIERS["heuristic"](), policy, registry)


def escalation_for(registry: ModelRegistry, artifact_dir: Path | None = None) -> Escalation:
    """The artifact's answer checks (its learned verifier among them), or else the default checks."""
    if _has_artifact(artifact_dir):
        return load_escalation_from_artifact(Path(artifact_dir), registry)
    return Escalation(registry)


def artifact_version(artifact_dir: Path) -> str:
    """The version recorded on every request an artifact decides: a prefix of its files' SHA-256."""
    return f"artifact:{artifact_digest(Path(artifact_dir))[:12]}"
