"""The model registry: which models exist, how to reach them, their tier, limits and list prices.

Loaded from a YAML file (``Settings.models_config``). ``${VAR}`` and ``${VAR:-default}`` in the file
are expanded from the environment, so one file can point at endpoints whose address is only known at
run time. API keys never sit in the file: each model names the variable that holds its key.
"""

from __future__ import annotations

import json
import os
import re
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


class ReplayLatency(BaseModel):
    """How long a replayed answer takes: time to first token plus the output tokens at a steady decode rate,
    times ``scale`` (1 for real time; 0 answers at once, e.g. for the offline harness)."""

    model_config = ConfigDict(extra="forbid")
    ttft_ms: float = Field(ge=0)
    output_tokens_per_s: float = Field(gt=0)
    scale: float = Field(1.0, ge=0)

    def seconds(self, output_tokens: int) -> float:
        return self.scale * (self.ttft_ms / 1000 + output_tokens / self.output_tokens_per_s)


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
    # Per HTTP try; the SDK retries 408/409/429/5xx, timeouts and connection errors up to max_retries times.
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(2, ge=0)
    # When set, transient errors are retried by time instead of by count: backoff with jitter (Retry-After
    # honoured) while the next try can start within this many seconds of the call's start and before the
    # request's deadline; max_retries is then not used.
    retry_budget_s: float | None = Field(None, gt=0)
    # Sent with every request, e.g. Azure's {"api-version": "..."} query or a gateway's headers.
    default_headers: dict[str, str] = Field(default_factory=dict)
    default_query: dict[str, str] = Field(default_factory=dict)
    # Replay provider only: simulated latency, a fixed extra per call and/or the latency model below.
    replay_latency_ms: float = Field(0.0, ge=0)
    # Whether the model accepts ``tools``/``tool_choice``: a routed request with tools only goes to such models.
    supports_tools: bool = False
    latency: ReplayLatency | None = None
    # Replay provider only: the OpenAI-compatible endpoint (the local stub) that answers prompts the outcomes
    # data does not hold; those answers are labelled unrecorded and left ungraded. Empty: such a prompt fails.
    unrecorded_base_url: str | None = None

    @property
    def provider_model_id(self) -> str:
        return self.model_id or self.name


class ModelRegistry(BaseModel):
    """The configured models: exactly one per tier on the routing ladder, or, with ``pool: true``, any
    number of models (tiers are then price bands for display) routed by a pool policy."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelSpec]
    # Model whose cost is recorded as the counterfactual "what if everything went to the expensive model".
    counterfactual: str | None = None
    # A pool: the policy may call any model in any order; ``counterfactual`` names the reference model.
    pool: bool = False

    @model_validator(mode="after")
    def _check(self) -> ModelRegistry:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate model names in registry: {names}")
        if self.pool:
            if not self.models or self.counterfactual is None or self.counterfactual not in names:
                raise ValueError("a pool registry needs models and a counterfactual (the reference model) among them")
            return self
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
        """The ladder's model of ``tier`` (in a pool: the first model listed in that price band)."""
        found = next((m for m in self.models if m.tier == tier), None)
        if found is None:
            raise KeyError(f"no model of tier {tier.value!r}; configured: {[m.name for m in self.models]}")
        return found

    @property
    def ladder(self) -> list[ModelSpec]:
        """Models from cheapest tier to most expensive."""
        return [self.by_tier(t) for t in TIER_ORDER]

    @property
    def counterfactual_model(self) -> ModelSpec:
        return self.get(self.counterfactual) if self.counterfactual else self.by_tier(Tier.expensive)

    @classmethod
    def from_yaml(cls, path: Path | str) -> ModelRegistry:
        path = Path(path)
        try:
            text = expand_env(path.read_text())
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"model registry file not found: {path}") from exc
        return cls.model_validate(yaml.safe_load(text))


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """``${VAR}`` -> its value (left as is when unset, so a file naming an unused endpoint still loads);
    ``${VAR:-default}`` -> its value, or ``default`` when unset or empty."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if default is not None:
            return value or default
        return value if value is not None else match.group(0)

    return _ENV_REF.sub(substitute, text)


def load_prices_usd(path: Path | str) -> dict[str, Prices]:
    """A prices file (JSON, USD per 1M tokens: ``{"model": {"input": 2.5, "output": 10.0}, ...}``; keys
    starting with ``_`` are notes) as ``{model: Prices}``. Every malformed entry is a clear ValueError."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"prices file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"prices file {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"prices file {path} must hold an object of model -> {{input, output}}")
    prices: dict[str, Prices] = {}
    for model, entry in raw.items():
        if model.startswith("_"):
            continue
        try:
            prices[model] = Prices.model_validate(entry)
        except ValueError:
            raise ValueError(f"prices file {path}: {model!r} must be {{\"input\": USD/1M, \"output\": USD/1M}}, "
                             f"got {entry!r}") from None
    if not prices:
        raise ValueError(f"prices file {path} has no prices")
    return prices
