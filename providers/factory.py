"""Builds the provider client of each configured model, by its kind."""

from __future__ import annotations

from pathlib import Path

from core.registry import ModelRegistry
from providers.base import Provider


def build_providers(registry: ModelRegistry, data_dir: Path | None = None) -> dict[str, Provider]:
    """One provider per model: ``openai`` kinds call their endpoint, ``replay`` kinds answer from the
    outcomes files under ``data_dir/outcomes`` (loaded once, shared by every replay model)."""
    from providers.openai_compatible import OpenAICompatibleProvider  # noqa: PLC0415 - keep imports light
    from providers.replay import OutcomeIndex, ReplayProvider  # noqa: PLC0415

    providers: dict[str, Provider] = {}
    index: OutcomeIndex | None = None
    for spec in registry.models:
        if spec.kind == "openai":
            providers[spec.name] = OpenAICompatibleProvider(spec)
        elif spec.kind == "replay":
            if index is None:
                if data_dir is None:
                    raise ValueError(f"model {spec.name!r} replays recorded outcomes: set ROUTER_DATA_DIR")
                from core.outcomes import load_outcomes  # noqa: PLC0415

                index = OutcomeIndex(load_outcomes([Path(data_dir) / "outcomes"]))
            unrecorded = None
            if spec.unrecorded_base_url:
                # The stub stands in for the model on prompts the data does not hold; no key needed.
                unrecorded = OpenAICompatibleProvider(spec.model_copy(update={
                    "kind": "openai", "base_url": spec.unrecorded_base_url, "api_key_env": None,
                    "model_id": f"stub-{spec.name}"}))
            providers[spec.name] = ReplayProvider(spec, index, unrecorded)
        else:  # pragma: no cover - the registry's schema allows only the kinds above
            raise ValueError(f"unknown provider kind {spec.kind!r} for model {spec.name!r}")
    return providers
