"""The model registry: which models exist, how to reach them, their tier, limits and list prices.

Loaded from a YAML file (``Settings.models_config``). ``${VAR}`` in the file is expanded from the
environment so one file can point at endpoints whose address is only known at run time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.messages import TIER_ORDER, Tier


class Prices(BaseModel):
    """List prices in USD per 1M tokens."""

    model_config = ConfigDict(extra="forbid")
    input: float = Field(ge=0)
    output: float = Field(ge=0)


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["openai", "replay"] = "openai"
    tier: Tier
    base_url: str | None = None
    api_key_env: str | None = None
    model_id: str | None = None
    context_window: int = Field(8192, ge=1)
    max_output_tokens: int = Field(4096, ge=1)
    tokenizer: Literal["o200k", "llama3", "phi3"] = "o200k"
    prices: Prices
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(2, ge=0)
    # Replay provider only: simulated latency.
    replay_latency_ms: float = Field(0.0, ge=0)

    @property
    def provider_model_id(self) -> str:
        return self.model_id or self.name

    @property
    def topic_suffix(self) -> str:
        return self.name


class ModelRegistry(BaseModel):
    """The configured models, exactly one per tier on the routing ladder."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelSpec]
    # Model whose cost is recorded as the counterfactual "what if everything went to the expensive model".
    counterfactual: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "ModelRegistry":
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate model names in registry: {names}")
        tiers = [m.tier for m in self.models]
        for tier in TIER_ORDER:
            if tiers.count(tier) != 1:
                raise ValueError(f"registry needs exactly one model of tier {tier.value!r}, found {tiers.count(tier)}")
        if self.counterfactual is not None and self.counterfactual not in names:
            raise ValueError(f"counterfactual model {self.counterfactual!r} is not in the registry")
        return self

    def get(self, name: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == name:
                return spec
        raise KeyError(f"unknown model {name!r}; configured: {[m.name for m in self.models]}")

    def by_tier(self, tier: Tier) -> ModelSpec:
        return next(m for m in self.models if m.tier == tier)

    @property
    def ladder(self) -> list[ModelSpec]:
        """Models from cheapest tier to most expensive."""
        return [self.by_tier(t) for t in TIER_ORDER]

    @property
    def counterfactual_model(self) -> ModelSpec:
        return self.get(self.counterfactual) if self.counterfactual else self.by_tier(Tier.expensive)

    @classmethod
    def from_yaml(cls, path: Path | str) -> "ModelRegistry":
        path = Path(path)
        try:
            text = os.path.expandvars(path.read_text())
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"model registry file not found: {path}") from exc
        return cls.model_validate(yaml.safe_load(text))
