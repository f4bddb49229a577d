"""Who may spend: API keys, tenants, budgets with holds, the request-id ledger and rate-limit windows.

Everything lives in Postgres so that any number of API processes enforce the same limits:

- a key is ``rk-<key_id>-<secret>``; only ``key_id`` (public) and an HMAC-SHA256 of the whole key are stored;
- each accepted request writes one ``request_ledger`` row (its id is never shared between tenants) and holds
  its worst-case cost on the key's and the tenant's ``budget_usage`` counters in the same transaction; the
  conditional update refuses the hold when settled spend + holds + this hold would pass the hard budget, so
  concurrent requests cannot overshoot it; the sink settles the hold to the real cost;
- rate limits are one-minute windows per key, counted with one conditional upsert.

Counter rows are always locked in one order (key rows before tenant rows) so that admissions and settlements
never deadlock.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from core.messages import PromptMessage
from sql.ledger import INSERT_ACCEPTED_SQL, accepted_row

Period = Literal["day", "month"]
Role = Literal["tenant", "admin"]
PiiMode = Literal["off", "redact-stored", "redact", "refuse"]
KEY_PREFIX = "rk"


# ---------------------------------------------------------------- keys

def new_key() -> tuple[str, str]:
    """A fresh key and its public id: ``rk-<12 hex>-<43 url-safe chars>`` (256 random bits of secret)."""
    key_id = secrets.token_hex(6)
    return f"{KEY_PREFIX}-{key_id}-{secrets.token_urlsafe(32)}", key_id


def key_id_of(key: str) -> str | None:
    """The public id inside a key, or None when the text does not have a key's shape."""
    parts = key.split("-", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 12 or not parts[2]:
        return None
    return parts[1]


def hash_key(key: str, pepper: str) -> bytes:
    """HMAC-SHA256 keyed with the server's pepper: a leaked table alone does not let anyone test guesses."""
    return hmac.new(pepper.encode(), key.encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant: str
    role: Role = "tenant"
    name: str | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    allowed_models: tuple[str, ...] | None = None
    requests_per_min: int | None = None
    tokens_per_min: int | None = None
    budget_period: Period = "month"
    budget_soft_micro_usd: int | None = None
    budget_hard_micro_usd: int | None = None
    # The key's tenant's policy as read with the key by ``authenticate`` (one query instead of two per request).
    tenant_policy: TenantPolicy | None = field(default=None, compare=False, repr=False)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def allows(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models

    def usable_at(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class TenantPolicy:
    tenant: str
    budget_period: Period = "month"
    budget_soft_micro_usd: int | None = None
    budget_hard_micro_usd: int | None = None
    pii_mode: PiiMode = "off"
    store_prompts: bool = True
    deny_list: tuple[str, ...] = ()
    max_prompt_chars: int | None = None


_KEY_FIELDS = ("key_id", "tenant", "role", "name", "created_at", "expires_at", "revoked_at", "allowed_models",
               "requests_per_min", "tokens_per_min", "budget_period", "budget_soft_micro_usd", "budget_hard_micro_usd")
_TENANT_FIELDS = ("tenant", "budget_period", "budget_soft_micro_usd", "budget_hard_micro_usd", "pii_mode",
                  "store_prompts", "deny_list", "max_prompt_chars")


def _api_key(row: dict[str, Any]) -> ApiKey:
    values = {name: row[name] for name in _KEY_FIELDS}
    if values["allowed_models"] is not None:
        values["allowed_models"] = tuple(values["allowed_models"])
    return ApiKey(**values)


def _tenant(row: dict[str, Any]) -> TenantPolicy:
    values = {name: row[name] for name in _TENANT_FIELDS}
    values["deny_list"] = tuple(values["deny_list"] or ())
    return TenantPolicy(**values)


async def ensure_tenant(conn: AsyncConnection, tenant: str) -> None:
    await conn.execute("INSERT INTO tenants (tenant) VALUES (%s) ON CONFLICT (tenant) DO NOTHING", (tenant,))


async def update_tenant(conn: AsyncConnection, tenant: str, **changes: Any) -> TenantPolicy:
    """Create the tenant when missing and set the given policy fields (None leaves a field as it is)."""
    await ensure_tenant(conn, tenant)
    changes = {name: value for name, value in changes.items() if value is not None}
    unknown = set(changes) - set(_TENANT_FIELDS)
    if unknown:
        raise ValueError(f"unknown tenant settings: {sorted(unknown)}")
    if changes:
        assignments = ", ".join(f"{name} = %({name})s" for name in changes)
        await conn.execute(f"UPDATE tenants SET {assignments} WHERE tenant = %(tenant)s", {**changes, "tenant": tenant})
    policy = await tenant_policy(conn, tenant)
    assert policy is not None
    return policy


async def tenant_policy(conn: AsyncConnection, tenant: str) -> TenantPolicy | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {', '.join(_TENANT_FIELDS)} FROM tenants WHERE tenant = %s", (tenant,))
        row = await cur.fetchone()
    return _tenant(row) if row else None


async def create_key(conn: AsyncConnection, pepper: str, tenant: str, *, role: Role = "tenant", name: str | None = None,
                     expires_at: datetime | None = None, allowed_models: Sequence[str] | None = None,
                     requests_per_min: int | None = None, tokens_per_min: int | None = None,
                     budget_period: Period = "month", budget_soft_micro_usd: int | None = None,
                     budget_hard_micro_usd: int | None = None) -> tuple[str, ApiKey]:
    """Store a new key (hashed) for ``tenant``, creating the tenant if needed; returns the key, shown only now."""
    await ensure_tenant(conn, tenant)
    key, key_id = new_key()
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "INSERT INTO api_keys (key_id, key_hash, tenant, role, name, expires_at, allowed_models, requests_per_min,"
            " tokens_per_min, budget_period, budget_soft_micro_usd, budget_hard_micro_usd)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            f" RETURNING {', '.join(_KEY_FIELDS)}",
            (key_id, hash_key(key, pepper), tenant, role, name, expires_at,
             list(allowed_models) if allowed_models is not None else None, requests_per_min, tokens_per_min,
             budget_period, budget_soft_micro_usd, budget_hard_micro_usd))
        row = await cur.fetchone()
    assert row is not None
    return key, _api_key(row)


async def authenticate(conn: AsyncConnection, pepper: str, key: str) -> ApiKey | None:
    """The stored key matching ``key`` (whatever its state), or None when no stored key matches."""
    key_id = key_id_of(key)
    if key_id is None:
        return None
    # With its tenant's policy (``ApiKey.tenant_policy``): admission needs it next, and this saves a round trip.
    key_columns = ", ".join(f"k.{name}" for name in _KEY_FIELDS)
    tenant_columns = ", ".join(f"t.{name} AS tenant_{name}" for name in _TENANT_FIELDS)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT k.key_hash, {key_columns}, {tenant_columns} FROM api_keys k"
                          " LEFT JOIN tenants t ON t.tenant = k.tenant WHERE k.key_id = %s", (key_id,))
        row = await cur.fetchone()
    if row is None or not hmac.compare_digest(bytes(row["key_hash"]), hash_key(key, pepper)):
        return None
    policy = (_tenant({name: row[f"tenant_{name}"] for name in _TENANT_FIELDS}) if row["tenant_tenant"] is not None
              else TenantPolicy(row["tenant"]))
    return replace(_api_key(row), tenant_policy=policy)


async def list_keys(conn: AsyncConnection, tenant: str | None = None) -> list[ApiKey]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {', '.join(_KEY_FIELDS)} FROM api_keys"
                          " WHERE %(tenant)s::text IS NULL OR tenant = %(tenant)s ORDER BY tenant, created_at",
                          {"tenant": tenant})
        return [_api_key(row) for row in await cur.fetchall()]


async def revoke_key(conn: AsyncConnection, key_id: str) -> bool:
    cursor = await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL"
                                " RETURNING key_id", (key_id,))
    return await cursor.fetchone() is not None


async def rotate_key(conn: AsyncConnection, pepper: str, key_id: str) -> tuple[str, ApiKey]:
    """A new key with the old one's tenant, role and limits; the old one is revoked in the same transaction."""
    async with conn.transaction():
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT {', '.join(_KEY_FIELDS)} FROM api_keys WHERE key_id = %s AND revoked_at IS NULL"
                              " FOR UPDATE", (key_id,))
            row = await cur.fetchone()
        if row is None:
            raise LookupError(f"no active key {key_id}")
        old = _api_key(row)
        key, new = await create_key(
            conn, pepper, old.tenant, role=old.role, name=old.name, expires_at=old.expires_at,
            allowed_models=old.allowed_models, requests_per_min=old.requests_per_min,
            tokens_per_min=old.tokens_per_min, budget_period=old.budget_period,
            budget_soft_micro_usd=old.budget_soft_micro_usd, budget_hard_micro_usd=old.budget_hard_micro_usd)
        await conn.execute("UPDATE api_keys SET revoked_at = now(), replaced_by = %s WHERE key_id = %s",
                           (new.key_id, key_id))
    return key, new


# ---------------------------------------------------------------- budgets and the request ledger

def period_start(period: Period, at: datetime) -> date:
    day = at.astimezone(UTC).date()
    return day if period == "day" else day.replace(day=1)


@dataclass
class Usage:
    """A counter after this request's hold: spend, holds and the budgets they are measured against."""

    scope: Literal["key", "tenant"]
    scope_id: str
    spent_micro_usd: int
    reserved_micro_usd: int
    soft_micro_usd: int | None
    hard_micro_usd: int | None
    period: Period = "month"

    @property
    def committed_micro_usd(self) -> int:
        return self.spent_micro_usd + self.reserved_micro_usd

    @property
    def over_soft(self) -> bool:
        return self.soft_micro_usd is not None and self.committed_micro_usd > self.soft_micro_usd

    def near(self, fraction: float) -> bool:
        """Committed spend has reached ``fraction`` of the hard (else soft) budget."""
        limit = self.hard_micro_usd if self.hard_micro_usd is not None else self.soft_micro_usd
        return limit is not None and self.committed_micro_usd >= fraction * limit


@dataclass
class Admission:
    """What ``admit_request`` decided. ``outcome``: ``accepted`` (hold placed), ``duplicate`` (this tenant already
    sent this id: nothing new held), ``foreign`` (the id belongs to another tenant), ``over_budget``, or
    ``rate_limited`` (the key's rate window refused it first). ``rate``: that window, when it was counted.
    ``first_acceptance``: with ``admit_request``'s ``accept``, whether its accepted-requests row is new (False: a
    client's retry of a request already accepted)."""

    outcome: Literal["accepted", "duplicate", "foreign", "over_budget", "rate_limited"]
    usage: list[Usage] = field(default_factory=list)
    refused_by: Usage | None = None
    settled: bool = False
    rate: RateState | None = None
    first_acceptance: bool = False


_HOLD_SQL = (
    "INSERT INTO budget_usage AS u (scope, scope_id, period, period_start, reserved_micro_usd, requests)"
    " VALUES (%(scope)s, %(scope_id)s, %(period)s, %(start)s, %(hold)s, 1)"
    " ON CONFLICT (scope, scope_id, period, period_start) DO UPDATE"
    " SET reserved_micro_usd = u.reserved_micro_usd + EXCLUDED.reserved_micro_usd, requests = u.requests + 1"
    " WHERE %(hard)s::bigint IS NULL OR u.spent_micro_usd + u.reserved_micro_usd + EXCLUDED.reserved_micro_usd"
    " <= %(hard)s::bigint"
    " RETURNING spent_micro_usd, reserved_micro_usd"
)


# The claim and both holds in one statement (one round trip instead of three): each step reads the row the step
# before it returned, so the key's counter is locked before the tenant's (the one lock order) and a step that is
# refused stops the ones after it. A refused hold rolls the whole transaction back (``admit_request``).
_ADMIT_SQL = f"""
WITH claim AS (
    INSERT INTO request_ledger (request_id, tenant, key_id, key_period, key_period_start, tenant_period,
                                tenant_period_start, reserved_micro_usd)
    VALUES (%(request_id)s, %(tenant)s, %(key_id)s, %(key_period)s, %(key_start)s, %(tenant_period)s,
            %(tenant_start)s, %(hold)s)
    ON CONFLICT (request_id) DO NOTHING RETURNING request_id
), key_hold AS (
    {_HOLD_SQL.replace(" VALUES (%(scope)s, %(scope_id)s, %(period)s, %(start)s, %(hold)s, 1)",
                       " SELECT 'key', %(key_id)s, %(key_period)s, %(key_start)s, %(hold)s, 1 FROM claim")
              .replace("%(hard)s", "%(key_hard)s")}
), tenant_hold AS (
    {_HOLD_SQL.replace(" VALUES (%(scope)s, %(scope_id)s, %(period)s, %(start)s, %(hold)s, 1)",
                       " SELECT 'tenant', %(tenant)s, %(tenant_period)s, %(tenant_start)s, %(hold)s, 1 FROM key_hold")
              .replace("%(hard)s", "%(tenant_hard)s")}
)
SELECT (SELECT count(*) FROM claim), k.spent_micro_usd, k.reserved_micro_usd, t.spent_micro_usd, t.reserved_micro_usd
FROM (SELECT 1) AS one LEFT JOIN key_hold k ON true LEFT JOIN tenant_hold t ON true
"""


async def admit_request(conn: AsyncConnection, *, request_id: str, key: ApiKey, tenant: TenantPolicy,
                        hold_micro_usd: int, now: datetime | None = None, rate_tokens: int | None = None,
                        accept: Callable[[Admission], PromptMessage] | None = None) -> Admission:
    """Claim ``request_id`` for the tenant and hold ``hold_micro_usd`` on the key's and the tenant's counters,
    all or nothing, in one transaction (two round trips: BEGIN with the statement, then COMMIT).

    With ``rate_tokens``, the request is also counted in the key's rate window for this minute, sent in the
    same round trip as the claim but committed on its own, as before: a budget refusal still counts against the
    rate. When the rate limit refuses the request, the claim is rolled back (outcome ``rate_limited``).
    ``Admission.rate`` holds the key's window then, whatever the outcome.

    With ``accept``, a claim that was not refused is handed to it before the commit: it raises to roll everything
    back, or returns the message to record as accepted, whose ``accepted_requests`` row (sql/ledger.py) then goes
    out with the COMMIT, in the same round trip. Claim, holds and acceptance are then all or nothing."""
    now = now or datetime.now(UTC)
    key_start, tenant_start = period_start(key.budget_period, now), period_start(tenant.budget_period, now)
    params = {"request_id": request_id, "tenant": tenant.tenant, "key_id": key.key_id,
              "key_period": key.budget_period, "key_start": key_start, "tenant_period": tenant.budget_period,
              "tenant_start": tenant_start, "hold": hold_micro_usd, "key_hard": key.budget_hard_micro_usd,
              "tenant_hard": tenant.budget_hard_micro_usd}
    rate_params = _rate_params(key, rate_tokens) if rate_tokens is not None else None
    rate: RateState | None = None
    async with conn.pipeline():
        rate_cursor = await conn.execute(_RATE_SQL, rate_params) if rate_params is not None else None
        try:
            async with conn.transaction():
                cursor = await conn.execute(_ADMIT_SQL, params)
                if rate_cursor is not None:
                    assert rate_params is not None
                    rate = await _rate_state(conn, key, rate_params, rate_cursor)
                    if not rate.allowed:
                        raise _Refused(Admission("rate_limited"))  # the claim and holds roll back
                admission = await _claimed_and_held(conn, cursor, request_id, key, tenant, key_start, tenant_start)
                admission.rate = rate
                # Queued, not awaited: the row goes out with the COMMIT and is read after it.
                accepted = (await conn.execute(INSERT_ACCEPTED_SQL, accepted_row(accept(admission)))
                            if accept is not None else None)
        except _Refused as refusal:
            refusal.admission.rate = rate
            raise
    if accepted is not None:
        admission.first_acceptance = await accepted.fetchone() is not None
    return admission


async def _claimed_and_held(conn: AsyncConnection, cursor: Any, request_id: str, key: ApiKey, tenant: TenantPolicy,
                            key_start: date, tenant_start: date) -> Admission:
    """The outcome of ``_ADMIT_SQL`` on ``cursor``; raises _Refused (to roll it back) when a hold was refused."""
    claimed, key_spent, key_reserved, tenant_spent, tenant_reserved = await cursor.fetchone()
    if not claimed:
        cursor = await conn.execute("SELECT tenant, settled_at FROM request_ledger WHERE request_id = %s",
                                    (request_id,))
        owner = await cursor.fetchone()
        if owner is None or owner[0] != tenant.tenant:
            return Admission("foreign")
        return Admission("duplicate", settled=owner[1] is not None)
    usage = []
    for scope, scope_id, period, start, soft, hard, held in (
            ("key", key.key_id, key.budget_period, key_start, key.budget_soft_micro_usd,
             key.budget_hard_micro_usd, (key_spent, key_reserved)),
            ("tenant", tenant.tenant, tenant.budget_period, tenant_start, tenant.budget_soft_micro_usd,
             tenant.budget_hard_micro_usd, (tenant_spent, tenant_reserved))):
        if held[0] is None or (hard is not None and held[0] + held[1] > hard):
            refused = await _usage_row(conn, scope, scope_id, period, start, soft, hard)
            # Undo the ledger row and any hold already placed: nothing half-written.
            raise _Refused(Admission("over_budget", usage=usage, refused_by=refused))
        usage.append(Usage(scope, scope_id, held[0], held[1], soft, hard, period))
    return Admission("accepted", usage=usage)


class _Refused(Exception):
    def __init__(self, admission: Admission) -> None:
        super().__init__(admission.outcome)
        self.admission = admission


async def admit_request_or_refuse(conn: AsyncConnection, **kwargs: Any) -> Admission:
    """``admit_request``, with a refusal (over budget, rate limited) rolled back and returned instead of raised."""
    try:
        return await admit_request(conn, **kwargs)
    except _Refused as refusal:
        return refusal.admission


async def _usage_row(conn: AsyncConnection, scope: str, scope_id: str, period: str, start: date,
                     soft: int | None, hard: int | None) -> Usage:
    cursor = await conn.execute("SELECT spent_micro_usd, reserved_micro_usd FROM budget_usage WHERE scope = %s"
                                " AND scope_id = %s AND period = %s AND period_start = %s", (scope, scope_id, period, start))
    row = await cursor.fetchone() or (0, 0)
    return Usage(scope, scope_id, row[0], row[1], soft, hard, period)  # type: ignore[arg-type]


async def release_request(conn: AsyncConnection, request_id: str) -> bool:
    """Drop the ledger row and the hold of a request that was never published (the broker refused it)."""
    async with conn.transaction():
        cursor = await conn.execute(
            "DELETE FROM request_ledger WHERE request_id = %s AND settled_at IS NULL"
            " RETURNING key_id, key_period, key_period_start, tenant, tenant_period, tenant_period_start,"
            " reserved_micro_usd", (request_id,))
        row = await cursor.fetchone()
        if row is None:
            return False
        key_id, key_period, key_start, tenant, tenant_period, tenant_start, hold = row
        for scope, scope_id, period, start in (("key", key_id, key_period, key_start),
                                               ("tenant", tenant, tenant_period, tenant_start)):
            if scope_id is not None:
                await conn.execute(
                    "UPDATE budget_usage SET reserved_micro_usd = reserved_micro_usd - %s, requests = requests - 1"
                    " WHERE scope = %s AND scope_id = %s AND period = %s AND period_start = %s",
                    (hold, scope, scope_id, period, start))
    return True


@dataclass(frozen=True)
class Settlement:
    request_id: str
    tenant: str
    cost_micro_usd: int
    created_at: datetime


async def settle_requests(conn: AsyncConnection, settlements: Sequence[Settlement]) -> int:
    """Turn holds into spend at the real cost, idempotently (a redelivered completion settles nothing twice).
    A request produced straight to the broker has no hold: its cost is added to its tenant's counter."""
    if not settlements:
        return 0
    deltas: dict[tuple[str, str, str, date], list[int]] = {}  # counter -> [reserved delta, spent delta, requests]
    async with conn.transaction():
        for item in sorted(settlements, key=lambda s: s.request_id):
            cursor = await conn.execute(
                "UPDATE request_ledger SET actual_micro_usd = %s, settled_at = now()"
                " WHERE request_id = %s AND settled_at IS NULL"
                " RETURNING key_id, key_period, key_period_start, tenant, tenant_period, tenant_period_start,"
                " reserved_micro_usd", (item.cost_micro_usd, item.request_id))
            row = await cursor.fetchone()
            new_requests = 0
            if row is None:
                period = await _tenant_period(conn, item.tenant)
                start = period_start(period, item.created_at)
                cursor = await conn.execute(
                    "INSERT INTO request_ledger (request_id, tenant, tenant_period, tenant_period_start,"
                    " actual_micro_usd, settled_at) VALUES (%s, %s, %s, %s, %s, now())"
                    " ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
                    (item.request_id, item.tenant, period, start, item.cost_micro_usd))
                if await cursor.fetchone() is None:
                    continue  # settled before
                row, new_requests = (None, None, None, item.tenant, period, start, 0), 1
            key_id, key_period, key_start, tenant, tenant_period, tenant_start, hold = row
            for counter in (("key", key_id, key_period, key_start), ("tenant", tenant, tenant_period, tenant_start)):
                if counter[1] is None:
                    continue
                delta = deltas.setdefault(counter, [0, 0, 0])
                delta[0] -= hold
                delta[1] += item.cost_micro_usd
                delta[2] += new_requests
        for (scope, scope_id, period, start), (reserved, spent, requests) in sorted(deltas.items()):
            await conn.execute(
                "INSERT INTO budget_usage AS u (scope, scope_id, period, period_start, reserved_micro_usd,"
                " spent_micro_usd, requests) VALUES (%s, %s, %s, %s, 0, %s, %s)"
                " ON CONFLICT (scope, scope_id, period, period_start) DO UPDATE"
                " SET reserved_micro_usd = u.reserved_micro_usd + %s, spent_micro_usd = u.spent_micro_usd + %s,"
                " requests = u.requests + %s",
                (scope, scope_id, period, start, spent, requests, reserved, spent, requests))
    return len(settlements)


async def _tenant_period(conn: AsyncConnection, tenant: str) -> Period:
    cursor = await conn.execute("SELECT budget_period FROM tenants WHERE tenant = %s", (tenant,))
    row = await cursor.fetchone()
    return row[0] if row else "month"


async def release_stale_holds(conn: AsyncConnection, older_than_s: float) -> int:
    """Give back the holds of requests that have not completed after ``older_than_s`` (dead-lettered, lost):
    they must not block a budget forever. The ledger row stays unsettled with a zero hold, so a late completion
    still adds its real cost."""
    released = 0
    async with conn.transaction():
        cursor = await conn.execute(
            "UPDATE request_ledger l SET reserved_micro_usd = 0 FROM ("
            "  SELECT request_id, reserved_micro_usd FROM request_ledger WHERE settled_at IS NULL"
            "  AND reserved_micro_usd > 0 AND created_at < now() - make_interval(secs => %s)"
            "  ORDER BY request_id LIMIT 1000 FOR UPDATE SKIP LOCKED) old"
            " WHERE l.request_id = old.request_id"
            " RETURNING l.key_id, l.key_period, l.key_period_start, l.tenant, l.tenant_period, l.tenant_period_start,"
            " old.reserved_micro_usd", (older_than_s,))
        deltas: dict[tuple[str, str, str, date], int] = {}
        for key_id, key_period, key_start, tenant, tenant_period, tenant_start, hold in await cursor.fetchall():
            released += 1
            for counter in (("key", key_id, key_period, key_start), ("tenant", tenant, tenant_period, tenant_start)):
                if counter[1] is not None:
                    deltas[counter] = deltas.get(counter, 0) + hold
        for (scope, scope_id, period, start), hold in sorted(deltas.items()):
            await conn.execute("UPDATE budget_usage SET reserved_micro_usd = reserved_micro_usd - %s WHERE scope = %s"
                               " AND scope_id = %s AND period = %s AND period_start = %s",
                               (hold, scope, scope_id, period, start))
    return released


async def request_owner(conn: AsyncConnection, request_id: str) -> str | None:
    cursor = await conn.execute("SELECT tenant FROM request_ledger WHERE request_id = %s", (request_id,))
    row = await cursor.fetchone()
    return row[0] if row else None


BUDGET_REPORT_SQL = (
    "WITH scopes AS ("
    "  SELECT 'tenant' AS scope, tenant AS scope_id, tenant, budget_period AS period,"
    "         budget_soft_micro_usd AS soft, budget_hard_micro_usd AS hard, NULL::text AS name FROM tenants"
    "  UNION ALL"
    "  SELECT 'key', key_id, tenant, budget_period, budget_soft_micro_usd, budget_hard_micro_usd, name"
    "  FROM api_keys WHERE revoked_at IS NULL)"
    " SELECT s.scope, s.scope_id, s.tenant, s.name, s.period AS budget_period,"
    "        CASE s.period WHEN 'day' THEN %(day)s ELSE %(month)s END AS period_start,"
    "        s.soft AS soft_micro_usd, s.hard AS hard_micro_usd,"
    "        coalesce(u.spent_micro_usd, 0) AS spent_micro_usd,"
    "        coalesce(u.reserved_micro_usd, 0) AS reserved_micro_usd, coalesce(u.requests, 0) AS requests"
    " FROM scopes s LEFT JOIN budget_usage u ON u.scope = s.scope AND u.scope_id = s.scope_id"
    "  AND u.period = s.period AND u.period_start = CASE s.period WHEN 'day' THEN %(day)s ELSE %(month)s END"
    " ORDER BY s.tenant, s.scope DESC, s.scope_id"
)


def budget_report_params(at: datetime | None = None) -> dict[str, date]:
    at = at or datetime.now(UTC)
    return {"day": period_start("day", at), "month": period_start("month", at)}


async def budget_report(conn: AsyncConnection, at: datetime | None = None) -> list[dict[str, Any]]:
    """Spend against budget in the current period, per tenant and per active key (the dashboard's table)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(BUDGET_REPORT_SQL, budget_report_params(at))
        return await cur.fetchall()


# ---------------------------------------------------------------- rate limits

@dataclass(frozen=True)
class RateState:
    allowed: bool
    requests: int
    tokens: int
    reset_s: float
    requests_limit: int | None
    tokens_limit: int | None

    @property
    def remaining_requests(self) -> int | None:
        return None if self.requests_limit is None else max(0, self.requests_limit - self.requests)

    @property
    def remaining_tokens(self) -> int | None:
        return None if self.tokens_limit is None else max(0, self.tokens_limit - self.tokens)


_RATE_SQL = (
    "INSERT INTO rate_windows AS w (key_id, window_start, requests, tokens)"
    " SELECT %(key_id)s, date_trunc('minute', now()), 1, %(tokens)s WHERE NOT %(too_big)s"
    " ON CONFLICT (key_id, window_start) DO UPDATE"
    " SET requests = w.requests + 1, tokens = w.tokens + EXCLUDED.tokens"
    " WHERE (%(rpm)s::integer IS NULL OR w.requests + 1 <= %(rpm)s::integer)"
    " AND (%(tpm)s::bigint IS NULL OR w.tokens + EXCLUDED.tokens <= %(tpm)s::bigint)"
    " RETURNING requests, tokens, extract(epoch FROM window_start + interval '1 minute' - now())"
)


def _rate_params(key: ApiKey, tokens: int) -> dict[str, Any]:
    return {"key_id": key.key_id, "tokens": tokens, "rpm": key.requests_per_min, "tpm": key.tokens_per_min,
            "too_big": key.tokens_per_min is not None and tokens > key.tokens_per_min}


async def _rate_state(conn: AsyncConnection, key: ApiKey, params: dict[str, Any], cursor: Any) -> RateState:
    """The key's minute after ``_RATE_SQL`` ran on ``cursor``: its counts, re-read when the request was refused."""
    row = await cursor.fetchone()
    allowed = row is not None
    if row is None:
        cursor = await conn.execute(
            "SELECT coalesce(max(requests), 0), coalesce(max(tokens), 0),"
            " extract(epoch FROM date_trunc('minute', now()) + interval '1 minute' - now())"
            " FROM rate_windows WHERE key_id = %(key_id)s AND window_start = date_trunc('minute', now())", params)
        row = await cursor.fetchone()
    assert row is not None
    return RateState(allowed, int(row[0]), int(row[1]), float(row[2]), key.requests_per_min, key.tokens_per_min)


async def forget_old_windows(conn: AsyncConnection) -> None:
    await conn.execute("DELETE FROM rate_windows WHERE window_start < now() - interval '5 minutes'")
