"""Wires the routing parts a worker needs from settings: registry, router, providers, cost book, executor."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from core.messages import RoutingDecision
from core.registry import ModelRegistry
from core.settings import Settings
from providers.base import Provider
from providers.costs import CostBook, RegistryCostBook, build_db_cost_book
from providers.executor import LadderExecutor
from providers.factory import build_providers
from providers.tokens import count_tokens, warm_up
from routing.experiments import ArmRouter, Experiment, ExperimentBook
from routing.factory import build_router, escalation_for
from routing.router import Router

log = logging.getLogger(__name__)


def load_registry(settings: Settings) -> ModelRegistry:
    return ModelRegistry.from_yaml(settings.models_config)


def build_cost_book(settings: Settings, registry: ModelRegistry) -> CostBook:
    """The prices every attempt is charged at: effective-dated rates from Postgres ``cost_rates`` (seeded with
    the config's list prices for models it lacks), or the config's list prices when there is no database."""
    if settings.pg_dsn:
        return build_db_cost_book(settings.pg_dsn, registry, refresh_s=settings.cost_rates_refresh_s,
                                  prices_file=settings.prices_file)
    return RegistryCostBook(registry)


def build_experiment_book(settings: Settings, registry: ModelRegistry) -> ExperimentBook | None:
    """The running experiments from Postgres, re-read every ``experiments_refresh_s``; None without a database."""
    if not settings.pg_dsn:
        return None
    dsn = settings.pg_dsn

    def load() -> list[Experiment]:
        import psycopg  # noqa: PLC0415

        from sql.repository import running_experiments  # noqa: PLC0415

        with psycopg.connect(dsn, connect_timeout=5) as conn:
            rows = running_experiments(conn)
        experiments = []
        for row in rows:
            try:
                experiment = Experiment.model_validate(row)
                experiment.validate_for(registry)
            except ValueError as exc:
                log.error("experiment %s is not usable on this worker and is skipped: %s", row["experiment_id"], exc)
                continue
            experiments.append(experiment)
        return experiments

    return ExperimentBook(load, refresh_s=settings.experiments_refresh_s)


@dataclass
class Runtime:
    registry: ModelRegistry
    router: Router
    providers: dict[str, Provider]
    executor: LadderExecutor
    arm_router: ArmRouter | None = None
    _executors: dict[str, LadderExecutor] = field(default_factory=dict)

    def executor_for(self, decision: RoutingDecision) -> LadderExecutor:
        """The default executor, or one with the answer checks of the candidate artifact that decided."""
        if decision.artifact is None or decision.artifact == self.router.artifact:
            return self.executor
        if decision.artifact not in self._executors:
            self._executors[decision.artifact] = LadderExecutor(
                self.registry, self.providers, escalation_for(self.registry, Path(decision.artifact)),
                self.executor.costs, breaker=self.executor.breaker, fallback_cost_cap=self.executor.fallback_cost_cap)
        return self._executors[decision.artifact]

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()


def build_runtime(settings: Settings, registry: ModelRegistry | None = None) -> Runtime:
    registry = registry or load_registry(settings)
    router = build_router(registry, settings.classifier_artifact, policy_name=settings.routing_policy,
                          token_counter=count_tokens, allow_mismatch=settings.allow_artifact_mismatch)
    providers = build_providers(registry, settings.data_dir)
    # Load the ladder's tokenizers now (o200k takes ~1 s) rather than on the first request.
    warm_up(sorted({m.tokenizer for m in registry.models}))
    executor = LadderExecutor(registry, providers, escalation_for(registry, settings.classifier_artifact),
                              build_cost_book(settings, registry), fallback_cost_cap=settings.fallback_cost_cap or None)
    arm_router = ArmRouter(
        router, registry, build_experiment_book(settings, registry),
        load_candidate=lambda artifact: build_router(registry, Path(artifact), token_counter=count_tokens))
    return Runtime(registry=registry, router=router, providers=providers, executor=executor, arm_router=arm_router)
