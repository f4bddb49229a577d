"""A trained classifier artifact: the folder ``python -m training.train`` writes and the router loads.

    classifier.json      labels, max length, padding side, pad id, which ONNX file to serve
    model.int8.onnx      the fine-tuned prompt classifier (or model.fp32.onnx where int8 lost accuracy)
    tokenizer.json       its tokenizer, for the ``tokenizers`` library
    policy.json          the calibrated routing policy, answer checks, verifier margins, max escalations
    verifier.json        the learned answer verifier (numpy logistic heads)
    reader.npz           its answer reader: log-odds an answer is right from the words of the response
    topic.npz            the topic model, when the training data had topics (numpy linear model)
    answer_model.json    a pool artifact's answer model (``routing.pool_policy``); a pool artifact has no
                         ONNX classifier (policy.json says ``"classifier": "heuristic"``)
    model_card.json      metrics, data fingerprint, held-out split, ladder, prices, commands  (+ MODEL_CARD.md)

Loading needs numpy, onnxruntime and tokenizers only: no torch, no transformers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from classifier.heuristic import HeuristicClassifier
from classifier.onnx_classifier import OnnxClassifier
from classifier.topic import TopicModel
from core.registry import ModelRegistry
from routing.answer_checks import ANSWER_CHECKS, AnswerCheck
from routing.escalation import Escalation
from routing.policy import TokenCounter, approximate_token_count
from routing.pool_policy import AnswerModel, PoolAnswerCheck, PoolPolicy
from routing.registry import build_policy
from routing.router import Router
from routing.verifier import LearnedVerifierCheck, load_verifier

log = logging.getLogger(__name__)

REQUIRED_FILES = ("classifier.json", "tokenizer.json", "policy.json", "model_card.json")
POOL_REQUIRED_FILES = ("policy.json", "model_card.json", AnswerModel.FILE)


class ArtifactError(ValueError):
    """The artifact folder is missing a file or holds something this code cannot load."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"artifact file missing: {path}") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"artifact file {path} is not valid JSON: {exc}") from None


def artifact_digest(artifact_dir: Path) -> str:
    """SHA-256 over every file of the artifact: proves evaluation left it untouched."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(artifact_dir).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(artifact_dir)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class ArtifactMismatchError(ArtifactError):
    """The artifact was calibrated for other models than the configured registry's ladder."""


def check_artifact_ladder(artifact_dir: Path, registry: ModelRegistry, *, allow_mismatch: bool = False) -> None:
    """Refuse an artifact whose ladder is not the registry's: its thresholds, verifier margins and token budgets
    were calibrated on those models' answers and prices. ``allow_mismatch`` (ROUTER_ALLOW_ARTIFACT_MISMATCH)
    loads it anyway, with a loud warning."""
    card = read_json(Path(artifact_dir) / "model_card.json")
    if card.get("pool"):
        # A pool artifact: its plans name models of the pool, which the registry must hold, all of them.
        trained = list(card["pool"])
        configured = [m.provider_model_id for m in registry.models]
        if set(trained) <= set(configured) or set(trained) <= {m.name for m in registry.models}:
            return
        kind = "pool"
    else:
        ladder = card.get("ladder") or {}
        trained = [ladder.get(tier) for tier in ("cheap", "mid", "expensive")]
        configured = [m.provider_model_id for m in registry.ladder]
        if trained in (configured, [m.name for m in registry.ladder]):
            return
        kind = "ladder"
    message = (f"classifier artifact {artifact_dir} was calibrated for the {kind} {' -> '.join(map(str, trained))}, "
               f"but the configured registry's models are {' -> '.join(configured)}")
    if allow_mismatch:
        log.warning("ARTIFACT/REGISTRY MISMATCH (allowed by ROUTER_ALLOW_ARTIFACT_MISMATCH): %s", message)
        return
    raise ArtifactMismatchError(f"{message}. Train an artifact for these models (python -m training.train "
                                f"--ladder {','.join(configured)} ...), point ROUTER_CLASSIFIER_ARTIFACT at one, "
                                f"or set ROUTER_ALLOW_ARTIFACT_MISMATCH=1 to load it anyway.")


def margin_value(value: float | None) -> float:
    return float("inf") if value is None else float(value)


def build_escalation(artifact_dir: Path, policy_doc: dict[str, Any], registry: ModelRegistry) -> Escalation:
    checks: list[AnswerCheck] = []
    known = {*ANSWER_CHECKS, LearnedVerifierCheck.name, PoolAnswerCheck.name}
    for name in policy_doc.get("checks", []):
        if name not in known:
            raise ArtifactError(f"policy.json names unknown answer check {name!r}; known: {sorted(known)}")
        if name == LearnedVerifierCheck.name:
            verifier = policy_doc.get("verifier") or {}
            try:
                model = load_verifier(artifact_dir, verifier)
            except (OSError, ValueError, KeyError) as exc:
                raise ArtifactError(f"{artifact_dir}: the verifier cannot be loaded: {exc}") from None
            margins = {tier: margin_value(v) for tier, v in verifier.get("margins", {}).items()}
            by_kind = {kind: {tier: margin_value(v) for tier, v in m.items()}
                       for kind, m in verifier.get("margins_by_kind", {}).items()}
            checks.append(LearnedVerifierCheck(model, registry, margins, by_kind))
        elif name == PoolAnswerCheck.name:
            try:
                answer_model = AnswerModel.load(artifact_dir / policy_doc.get("answer_model", AnswerModel.FILE))
                policy = PoolPolicy(**policy_doc["params"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ArtifactError(f"{artifact_dir}: the pool answer model cannot be loaded: {exc}") from None
            unknown = {m for plan in [policy.default, *policy.by_kind.values()]
                       for m in (plan.first, plan.second, plan.final, policy.reference) if m is not None} - {
                m.name for m in registry.models}
            if unknown:
                raise ArtifactError(f"{artifact_dir}: the pool policy calls {sorted(unknown)}, which the model "
                                    f"registry does not configure")
            checks.append(PoolAnswerCheck(answer_model, policy))
        else:
            checks.append(ANSWER_CHECKS[name]())
    return Escalation(registry, checks, max_escalations=int(policy_doc.get("max_escalations", 1)))


def read_policy_doc(artifact_dir: Path) -> dict[str, Any]:
    """The artifact's ``policy.json``, after checking that the folder is a whole artifact."""
    pool = (Path(artifact_dir) / AnswerModel.FILE).exists()
    missing = [name for name in (POOL_REQUIRED_FILES if pool else REQUIRED_FILES)
               if not (Path(artifact_dir) / name).exists()]
    if missing:
        raise ArtifactError(f"{artifact_dir} is not a classifier artifact: missing {missing}")
    return read_json(Path(artifact_dir) / "policy.json")


def load_escalation_from_artifact(artifact_dir: Path, registry: ModelRegistry) -> Escalation:
    """The answer checks and escalation limit the artifact was calibrated with."""
    return build_escalation(Path(artifact_dir), read_policy_doc(artifact_dir), registry)


def load_router_from_artifact(
    artifact_dir: Path,
    registry: ModelRegistry,
    token_counter: TokenCounter = approximate_token_count,
    *,
    allow_mismatch: bool = False,
) -> Router:
    artifact_dir = Path(artifact_dir)
    policy_doc = read_policy_doc(artifact_dir)
    check_artifact_ladder(artifact_dir, registry, allow_mismatch=allow_mismatch)
    # A pool artifact routes on the prompt's kind and topic and on the answers; its policy names the
    # (cheap, numpy-free) classifier whose probabilities only travel along in the decision.
    classifier = HeuristicClassifier() if policy_doc.get("classifier") == "heuristic" \
        else OnnxClassifier.from_dir(artifact_dir)
    try:
        policy = build_policy(policy_doc["policy"], token_counter=token_counter, **policy_doc.get("params", {}))
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"policy.json does not describe a usable policy: {exc}") from None
    card = read_json(artifact_dir / "model_card.json")
    log.info("classifier artifact %s: policy %s %s, ladder %s", artifact_dir, policy.name, policy.params(),
             card.get("ladder") or card.get("pool"))
    return Router(classifier, policy, registry, TopicModel.load(artifact_dir))
