"""Wires the routing parts a worker needs from settings: registry, router, providers, cost book, executor."""

from __future__ import annotations

from dataclasses import dataclass

from core.registry import ModelRegistry
from core.settings import Settings
from providers.base import Provider
from providers.costs import CostBook, RegistryCostBook, build_db_cost_book
from providers.executor import LadderExecutor
from providers.factory import build_providers
from providers.tokens import count_tokens, warm_up
from routing.factory import build_router, escalation_for
from routing.router import Router


def load_registry(settings: Settings) -> ModelRegistry:
    return ModelRegistry.from_yaml(settings.models_config)


def build_cost_book(settings: Settings, registry: ModelRegistry) -> CostBook:
    """The prices every attempt is charged at: effective-dated rates from Postgres ``cost_rates`` (seeded with
    the config's list prices for models it lacks), or the config's list prices when there is no database."""
    if settings.pg_dsn:
        return build_db_cost_book(settings.pg_dsn, registry, refresh_s=settings.cost_rates_refresh_s,
                                  prices_file=settings.prices_file)
    return RegistryCostBook(registry)


@dataclass
class Runtime:
    registry: ModelRegistry
    router: Router
    providers: dict[str, Provider]
    executor: LadderExecutor

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()


def build_runtime(settings: Settings, registry: ModelRegistry | None = None) -> Runtime:
    registry = registry or load_registry(settings)
    router = build_router(registry, settings.classifier_artifact, policy_name=settings.routing_policy,
                          token_counter=count_tokens)
    providers = build_providers(registry, settings.data_dir)
    # Load the ladder's tokenizers now (o200k takes ~1 s) rather than on the first request.
    warm_up(sorted({m.tokenizer for m in registry.models}))
    executor = LadderExecutor(registry, providers, escalation_for(registry, settings.classifier_artifact),
                              build_cost_book(settings, registry))
    return Runtime(registry=registry, router=router, providers=providers, executor=executor)
