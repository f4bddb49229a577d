"""An artifact calibrated for other models than the configured registry's ladder is refused at start-up,
naming both ladders, unless the override is given."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from core.registry import ModelRegistry
from core.settings import Settings
from routing.artifact import ArtifactMismatchError, check_artifact_ladder
from routing.factory import build_router
from stream_processors.runtime import build_runtime

REGISTRY = ModelRegistry.model_validate({"models": [
    {"name": "phi", "kind": "replay", "tier": "cheap", "model_id": "phi-3.5-mini-instruct",
     "prices": {"input": 0.13, "output": 0.52}},
    {"name": "llama", "kind": "replay", "tier": "mid", "model_id": "llama-3-70b-instruct",
     "prices": {"input": 0.59, "output": 0.79}},
    {"name": "gpt", "kind": "replay", "tier": "expensive", "model_id": "gpt-4o-2024-05-13",
     "prices": {"input": 2.5, "output": 10.0}},
]})


def fake_artifact(folder: Path, ladder: dict[str, str]) -> Path:
    """The files the loader checks before it reads any model: enough to reach the ladder check."""
    folder.mkdir(parents=True)
    for name in ("classifier.json", "tokenizer.json"):
        (folder / name).write_text("{}")
    (folder / "policy.json").write_text(json.dumps({"policy": "threshold", "params": {}}))
    (folder / "model_card.json").write_text(json.dumps({"ladder": ladder}))
    return folder


OTHER = {"cheap": "qwen-2-7b", "mid": "mixtral-8x22b", "expensive": "claude-3-opus"}


def test_mismatched_artifact_is_refused_naming_both_ladders(tmp_path: Path) -> None:
    artifact = fake_artifact(tmp_path / "other", OTHER)
    with pytest.raises(ArtifactMismatchError) as refused:
        build_router(REGISTRY, artifact)
    message = str(refused.value)
    assert "qwen-2-7b -> mixtral-8x22b -> claude-3-opus" in message
    assert "phi-3.5-mini-instruct -> llama-3-70b-instruct -> gpt-4o-2024-05-13" in message
    assert "ROUTER_ALLOW_ARTIFACT_MISMATCH" in message


def test_worker_start_up_refuses_it_too(tmp_path: Path) -> None:
    artifact = fake_artifact(tmp_path / "other", OTHER)
    settings = Settings(_env_file=None).model_copy(update={"classifier_artifact": artifact})
    with pytest.raises(ArtifactMismatchError, match="calibrated for the ladder"):
        build_runtime(settings, REGISTRY)


def test_override_loads_it_with_a_loud_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    artifact = fake_artifact(tmp_path / "other", OTHER)
    with caplog.at_level(logging.WARNING):
        check_artifact_ladder(artifact, REGISTRY, allow_mismatch=True)
    assert "ARTIFACT/REGISTRY MISMATCH" in caplog.text and "claude-3-opus" in caplog.text


def test_matching_artifact_passes_by_model_id_or_name(tmp_path: Path) -> None:
    by_id = fake_artifact(tmp_path / "ids", {"cheap": "phi-3.5-mini-instruct", "mid": "llama-3-70b-instruct",
                                             "expensive": "gpt-4o-2024-05-13"})
    by_name = fake_artifact(tmp_path / "names", {"cheap": "phi", "mid": "llama", "expensive": "gpt"})
    check_artifact_ladder(by_id, REGISTRY)
    check_artifact_ladder(by_name, REGISTRY)
