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
            providers[spec.name] = ReplayProvider(spec, index)
        else:  # pragma: no cover - the registry's schema allows only the kinds above
            raise ValueError(f"unknown provider kind {spec.kind!r} for model {spec.name!r}")
    return providers
