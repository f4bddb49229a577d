"""Admission's one-statement claim and holds (sql/keys.py ``admit_request``): all or nothing, whichever step
refuses, on an autocommit connection like the API's pool and inside a caller's transaction."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from psycopg import AsyncConnection

from core.messages import PromptMessage, utcnow
from sql.keys import Admission, TenantPolicy, admit_request_or_refuse, authenticate, tenant_policy
from tests.keys import new_key, set_tenant


async def _state(conn: AsyncConnection, tenant: str, key_id: str) -> dict:
    cursor = await conn.execute("SELECT scope, reserved_micro_usd, requests FROM budget_usage"
                                " WHERE (scope = 'tenant' AND scope_id = %s) OR (scope = 'key' AND scope_id = %s)",
                                (tenant, key_id))
    counters = {scope: (reserved, requests) for scope, reserved, requests in await cursor.fetchall()}
    cursor = await conn.execute("SELECT count(*) FROM request_ledger WHERE tenant = %s", (tenant,))
    return {"counters": counters, "ledger": (await cursor.fetchone())[0]}


@pytest.mark.parametrize("autocommit", [True, False])
async def test_a_refused_hold_leaves_nothing_written(pg_dsn, autocommit):
    tenant = f"adm-{uuid.uuid4().hex[:8]}"
    await set_tenant(pg_dsn, tenant, budget_hard_micro_usd=1_000)
    _, key = await new_key(pg_dsn, tenant, budget_hard_micro_usd=700)
    policy = TenantPolicy(tenant, budget_hard_micro_usd=1_000)
    async with await AsyncConnection.connect(pg_dsn, autocommit=autocommit) as conn:
        accepted = await admit_request_or_refuse(conn, request_id=f"{tenant}-1", key=key, tenant=policy,
                                                 hold_micro_usd=600)
        assert accepted.outcome == "accepted"
        assert [(u.scope, u.reserved_micro_usd) for u in accepted.usage] == [("key", 600), ("tenant", 600)]
        before = await _state(conn, tenant, key.key_id)
        assert before == {"counters": {"key": (600, 1), "tenant": (600, 1)}, "ledger": 1}

        # The key's hard budget refuses: no ledger row, no tenant hold.
        by_key = await admit_request_or_refuse(conn, request_id=f"{tenant}-2", key=key, tenant=policy,
                                               hold_micro_usd=200)
        assert by_key.outcome == "over_budget" and by_key.refused_by.scope == "key"
        assert await _state(conn, tenant, key.key_id) == before

        # A second key of the same tenant passes its own (unlimited) hold; the tenant's refuses: its key hold
        # and ledger row are rolled back with it.
        _, other = await new_key(pg_dsn, tenant)
        by_tenant = await admit_request_or_refuse(conn, request_id=f"{tenant}-3", key=other, tenant=policy,
                                                  hold_micro_usd=500)
        assert by_tenant.outcome == "over_budget" and by_tenant.refused_by.scope == "tenant"
        assert by_tenant.refused_by.reserved_micro_usd == 600
        assert await _state(conn, tenant, key.key_id) == before
        cursor = await conn.execute("SELECT count(*) FROM budget_usage WHERE scope = 'key' AND scope_id = %s"
                                    " AND reserved_micro_usd <> 0", (other.key_id,))
        assert (await cursor.fetchone())[0] == 0

        # The same id again: a duplicate, nothing new held; another tenant's claim on it: foreign.
        again = await admit_request_or_refuse(conn, request_id=f"{tenant}-1", key=key, tenant=policy,
                                              hold_micro_usd=1)
        assert again.outcome == "duplicate" and not again.settled
        stranger = f"adm-{uuid.uuid4().hex[:8]}"
        _, stranger_key = await new_key(pg_dsn, stranger)
        foreign = await admit_request_or_refuse(conn, request_id=f"{tenant}-1", key=stranger_key,
                                                tenant=TenantPolicy(stranger), hold_micro_usd=1)
        assert foreign.outcome == "foreign"
        assert await _state(conn, tenant, key.key_id) == before
        if not autocommit:
            await conn.commit()


async def test_the_rate_window_is_counted_with_the_claim_and_a_rate_refusal_rolls_the_claim_back(pg_dsn):
    tenant = f"adm-{uuid.uuid4().hex[:8]}"
    _, key = await new_key(pg_dsn, tenant, requests_per_min=2, budget_hard_micro_usd=10_000)
    policy = TenantPolicy(tenant)
    async with await AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        outcomes = [await admit_request_or_refuse(conn, request_id=f"{tenant}-{n}", key=key, tenant=policy,
                                                  hold_micro_usd=100, rate_tokens=10) for n in range(3)]
        assert [a.outcome for a in outcomes] == ["accepted", "accepted", "rate_limited"]
        assert [(a.rate.allowed, a.rate.requests, a.rate.tokens) for a in outcomes] == [
            (True, 1, 10), (True, 2, 20), (False, 2, 20)]
        # The refused request left no ledger row and no hold.
        assert await _state(conn, tenant, key.key_id) == {"counters": {"key": (200, 2), "tenant": (200, 2)},
                                                          "ledger": 2}
        # A budget refusal still counts in the rate window, as it did when the two were separate statements.
        _, small = await new_key(pg_dsn, tenant, budget_hard_micro_usd=50)
        refused = await admit_request_or_refuse(conn, request_id=f"{tenant}-x", key=small, tenant=policy,
                                                hold_micro_usd=100, rate_tokens=10)
        assert refused.outcome == "over_budget" and (refused.rate.allowed, refused.rate.requests) == (True, 1)


async def test_the_accepted_row_commits_with_the_claim_or_not_at_all(pg_dsn):
    tenant = f"adm-{uuid.uuid4().hex[:8]}"
    _, key = await new_key(pg_dsn, tenant, budget_hard_micro_usd=1_000)
    policy = TenantPolicy(tenant)

    def prompt(n: int) -> PromptMessage:
        return PromptMessage(request_id=f"{tenant}-{n}", prompt="hello", tenant=tenant,
                             deadline_at=utcnow() + timedelta(seconds=60))

    class Refusal(Exception):
        pass

    def refuse(admission: Admission) -> PromptMessage:
        raise Refusal(admission.outcome)

    async def accepted_rows(conn: AsyncConnection) -> list[str]:
        cursor = await conn.execute("SELECT request_id FROM accepted_requests WHERE request_id LIKE %s"
                                    " ORDER BY request_id", (f"{tenant}-%",))
        return [row[0] for row in await cursor.fetchall()]

    seen: list[str] = []

    def accept(admission: Admission) -> PromptMessage:
        seen.append(admission.outcome)
        return prompt(len(seen))

    async with await AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        first = await admit_request_or_refuse(conn, request_id=f"{tenant}-1", key=key, tenant=policy,
                                              hold_micro_usd=600, rate_tokens=5, accept=accept)
        assert (first.outcome, first.first_acceptance, seen) == ("accepted", True, ["accepted"])
        assert await accepted_rows(conn) == [f"{tenant}-1"]
        before = await _state(conn, tenant, key.key_id)

        # Over budget: rolled back before ``accept`` is asked; nothing accepted.
        over = await admit_request_or_refuse(conn, request_id=f"{tenant}-2", key=key, tenant=policy,
                                             hold_micro_usd=600, accept=accept)
        assert over.outcome == "over_budget" and seen == ["accepted"]
        # ``accept`` refuses: the claim and holds roll back with it.
        with pytest.raises(Refusal):
            await admit_request_or_refuse(conn, request_id=f"{tenant}-2", key=key, tenant=policy,
                                          hold_micro_usd=100, accept=refuse)
        assert await _state(conn, tenant, key.key_id) == before
        assert await accepted_rows(conn) == [f"{tenant}-1"]

        # A client's retry of the accepted request: a duplicate claim, and its row was there already.
        seen.clear()
        retry = await admit_request_or_refuse(conn, request_id=f"{tenant}-1", key=key, tenant=policy,
                                              hold_micro_usd=100, accept=accept)
        assert (retry.outcome, retry.first_acceptance, seen) == ("duplicate", False, ["duplicate"])
        assert await _state(conn, tenant, key.key_id) == before


async def test_a_key_is_read_with_its_tenants_policy(pg_dsn):
    tenant = f"adm-{uuid.uuid4().hex[:8]}"
    plain, _ = await new_key(pg_dsn, tenant)
    await set_tenant(pg_dsn, tenant, pii_mode="refuse", max_prompt_chars=123)
    async with await AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        key = await authenticate(conn, "", plain)
        assert key is not None and key.tenant == tenant
        assert key.tenant_policy == await tenant_policy(conn, tenant)
        assert (key.tenant_policy.pii_mode, key.tenant_policy.max_prompt_chars) == ("refuse", 123)
        assert await authenticate(conn, "", plain + "x") is None
