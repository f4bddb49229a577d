"""The model registry: shipped configs load, ${VAR} and ${VAR:-default} expand, bad files fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.registry import ModelRegistry, expand_env

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["models.example.yaml", "models.demo.yaml", "models.local.yaml"])
def test_shipped_configs_load_with_one_model_per_tier(name: str) -> None:
    registry = ModelRegistry.from_yaml(REPO / "config" / name)
    assert [m.tier.value for m in registry.ladder] == ["cheap", "mid", "expensive"]
    assert registry.counterfactual_model.tier.value == "expensive"


def test_example_config_names_key_variables_not_keys() -> None:
    registry = ModelRegistry.from_yaml(REPO / "config" / "models.example.yaml")
    assert {m.api_key_env for m in registry.models} == {"AZURE_PHI3_API_KEY", "GROQ_API_KEY", "OPENAI_API_KEY"}
    assert {m.tokenizer for m in registry.models} == {"phi3", "llama3", "o200k"}


def test_env_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_T_SET", "http://a/v1")
    monkeypatch.delenv("ROUTER_T_UNSET", raising=False)
    assert expand_env("${ROUTER_T_SET} ${ROUTER_T_UNSET:-dflt} ${ROUTER_T_UNSET}") == "http://a/v1 dflt ${ROUTER_T_UNSET}"
    monkeypatch.setenv("ROUTER_REPLAY_LATENCY_MS", "25")
    registry = ModelRegistry.from_yaml(REPO / "config" / "models.demo.yaml")
    assert {m.replay_latency_ms for m in registry.models} == {25.0}


def test_bad_registry_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("models:\n  - {name: a, tier: cheap, prices: {input: 1, output: 1}}\n")
    with pytest.raises(ValidationError, match="exactly one model of tier 'mid'"):
        ModelRegistry.from_yaml(path)
    with pytest.raises(FileNotFoundError, match="model registry file not found"):
        ModelRegistry.from_yaml(tmp_path / "missing.yaml")
