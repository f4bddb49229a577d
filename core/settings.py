"""The one settings object of the router. Every stage reads its configuration from here."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Configuration from environment variables prefixed ``ROUTER_`` (or a ``.env`` file)."""

    model_config = SettingsConfigDict(env_prefix="ROUTER_", env_file=".env", extra="ignore")

    # Broker
    kafka_bootstrap: str = "127.0.0.1:19092"
    topic_prompts: str = "prompts"
    topic_completions: str = "completions"
    topic_dead_letter: str = "dead-letter"
    topic_route_prefix: str = "route."
    topic_replies_prefix: str = "replies."
    prompts_partitions: int = Field(6, ge=1)
    route_partitions: int = Field(6, ge=1)
    completions_partitions: int = Field(6, ge=1)

    # Faust workers. Short session timeout and heartbeat keep group joins fast on the local broker.
    faust_app_id: str = "cost-router"
    faust_data_dir: Path = PROJECT_ROOT / ".data" / "faust"
    broker_session_timeout_s: float = 6.0
    broker_heartbeat_interval_s: float = 1.0
    # How long a fetch may wait at the broker for data. Faust fixes it at 1500 ms, and a partition whose
    # records were just taken waits for the fetch in flight to return: at low traffic that cost ~0.5 s per hop.
    # 10 ms: /generate adds ~25 ms at p50 instead of ~70 ms with 50 ms, for ~10% less peak throughput
    # (measured back to back, docs/benchmarks.md).
    consumer_fetch_max_wait_ms: int = Field(10, ge=0, le=5000)
    # The same for an API process's reply consumer while a caller waits for an answer (ingest.bridge).
    reply_fetch_max_wait_ms: int = Field(2, ge=0, le=5000)
    # Agent throughput knobs: classify and sink work in batches, providers in concurrent calls per model.
    classify_batch_max: int = Field(128, ge=1)
    classify_concurrency: int = Field(2, ge=1)
    provider_concurrency: int = Field(64, ge=1)
    sink_batch_max: int = Field(256, ge=1)
    sink_concurrency: int = Field(2, ge=1)
    # A batch is cut after this long: 5 ms instead of 50 ms took ~40 ms off /generate's p50 at the same
    # throughput (docs/benchmarks.md); under load batches still fill up to the max sizes above.
    batch_within_s: float = Field(0.005, gt=0)
    # A reply topic whose API process is gone must not stall a provider agent.
    reply_publish_timeout_s: float = Field(5.0, gt=0)

    # Database. PG_DSN is honoured as-is because it is the conventional name operators set.
    pg_dsn: str | None = Field(None, validation_alias=AliasChoices("ROUTER_PG_DSN", "PG_DSN"))
    pg_pool_max: int = Field(8, ge=1)
    # Connections the API's and the per-call pools keep open even when idle (at most pg_pool_max): a burst of
    # requests after a quiet spell would otherwise wait while the pool opens connections one by one.
    pg_pool_min: int = Field(4, ge=1)

    # Models and routing
    models_config: Path = PROJECT_ROOT / "config" / "models.local.yaml"
    prices_file: Path | None = None
    # How often a worker re-reads cost_rates (a price update takes effect for requests created after it).
    cost_rates_refresh_s: float = Field(30.0, gt=0)
    classifier_artifact: Path | None = None
    routing_policy: str = "threshold"
    # Load an artifact calibrated for other models than the registry's ladder (refused otherwise).
    allow_artifact_mismatch: bool = False

    # Outcomes data (never committed): ROUTER_DATA_DIR points at the folder holding outcomes/*.jsonl.gz.
    data_dir: Path | None = None

    # Ingest API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Idle keep-alive connections are kept this long (uvicorn's default is 5 s). Longer than the idle timeout of the
    # clients and load balancers in front (60 s is common), so they never reuse a connection the API just closed.
    api_keep_alive_s: int = Field(75, ge=1)
    max_prompt_chars: int = Field(32_000, ge=1)
    default_max_tokens: int = Field(512, ge=1)
    generate_timeout_s: float = Field(60.0, gt=0)
    # OpenAI-compatible gateway (/v1): a request body larger than this is refused (413) before it is parsed.
    gateway_max_body_bytes: int = Field(1_048_576, ge=1024)
    # Keep a conversation (an id from x-conversation-id or metadata.conversation_id, with the caller's ``user``) on
    # the tier of the most expensive model an earlier turn used: a cheaper model would answer follow-ups without
    # the capability the conversation needed so far, and models change style mid-conversation.
    conversation_pinning: bool = True

    # Online experiments and feedback (issue: prove the savings online).
    topic_feedback: str = "feedback"
    feedback_partitions: int = Field(1, ge=1)
    # Workers re-read the experiments table at most this often: a change (shares, a new or ended experiment)
    # applies to every prompt classified more than this long (plus one batch) after it is committed.
    experiments_refresh_s: float = Field(5.0, gt=0)
    # A feedback score (1-5) at or above this counts as a pass where no pass_fail is given.
    feedback_pass_score: int = Field(4, ge=1, le=5)
    # A feedback record on the topic whose request is not recorded yet is retried this long, then dead-lettered.
    feedback_wait_for_request_s: float = Field(30.0, ge=0)

    # Dashboard
    dashboard_port: int = 8501
    # Where the dashboard's offline-evaluation view looks for harness reports (training.evaluate --json).
    dashboard_reports_dir: Path = PROJECT_ROOT / "artifacts"

    # Reliability (docs/reliability.md). Every accepted request gets a ledger row; the reconciler republishes
    # one that has no requests row after ``republish_after_s`` and records it expired at its deadline.
    request_deadline_s: float = Field(600.0, gt=0)
    republish_after_s: float = Field(60.0, gt=0)
    reconcile_interval_s: float = Field(5.0, gt=0)
    # How long the API waits for the database to write the ledger row before refusing with 503.
    accept_db_timeout_s: float = Field(5.0, gt=0)
    # Workers write a heartbeat with the partitions they hold; /readyz counts those seen within fresh_s.
    heartbeat_interval_s: float = Field(2.0, gt=0)
    heartbeat_fresh_s: float = Field(15.0, gt=0)
    # Fallback after a model error or an open circuit goes at most to a model whose list price (input + output
    # per 1M tokens) is this many times the routed model's; beyond it the request fails instead (0: no cap).
    fallback_cost_cap: float = Field(3.0, ge=0)
    # Provider-outage parking (docs/reliability.md): a request whose allowed models are all down waits in Postgres
    # and is retried with exponential backoff and jitter (park_initial_s, doubling, at most park_max_s apart) until
    # its deadline (``deadline_at``, else created_at + request_deadline_s); a sweeper in each worker releases due
    # requests every park_sweep_interval_s. park_enabled=False: such a request fails at once.
    park_enabled: bool = True
    park_initial_s: float = Field(1.0, gt=0)
    park_max_s: float = Field(30.0, gt=0)
    park_sweep_interval_s: float = Field(1.0, gt=0)
    # Prometheus /metrics of a Faust worker (0: off; the API serves its own on its port).
    worker_metrics_port: int = Field(0, ge=0, le=65535)
    # Access, budgets and limits on what comes in (docs/security.md)
    # Keys are stored as HMAC-SHA256(pepper, key): set a long random pepper in production and keep it secret;
    # changing it invalidates every key.
    api_key_pepper: SecretStr = SecretStr("")
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_metadata_items: int = Field(32, ge=0)
    max_metadata_key_chars: int = Field(64, ge=1)
    max_metadata_value_chars: int = Field(1024, ge=1)
    max_metadata_chars: int = Field(8192, ge=1)
    # A prompt's reply_to must match this; default: the reply-topic prefix followed by an API instance id.
    reply_topic_pattern: str | None = None
    # Holds of requests that never completed (dead-lettered, lost) are released after this long.
    budget_hold_ttl_s: float = Field(900.0, gt=0)
    # When a key's or tenant's committed spend reaches this fraction of its hard budget (its soft budget when it
    # has no hard one), its requests are routed no higher than the cheap tier. None: off.
    budget_prefer_cheap_at: float | None = Field(None, gt=0, le=1)
    # PII guardrail: Presidio entities to look for, and a spaCy NER model for names (none offline: patterns only).
    pii_entities: list[str] = Field(default_factory=lambda: ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD",
                                                             "IBAN_CODE"])
    pii_spacy_model: str | None = None
    # Dashboard: "none" (bound to loopback) or "oidc" (Streamlit's st.login, configured in .streamlit/secrets.toml).
    dashboard_auth: Literal["none", "oidc"] = "none"
    dashboard_allowed_emails: list[str] = Field(default_factory=list)

    def reply_topic_regex(self) -> re.Pattern[str]:
        return re.compile(self.reply_topic_pattern or rf"^{re.escape(self.topic_replies_prefix)}[A-Za-z0-9_.-]{{1,200}}$")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built on first use rather than at import."""
    return Settings()
