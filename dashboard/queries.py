"""Every SQL query of the dashboard: aggregated in Postgres, filtered in WHERE clauses, cached briefly.

Each public function takes the DSN and a :class:`Filters` and returns a small, already aggregated
``DataFrame`` (one row per day, per model, ...), never the raw rows. Results are cached for
``CACHE_TTL_S`` seconds with ``st.cache_data`` so that moving between views and re-running the
script on a widget change does not hit the database again; the connection pool is one per DSN,
created lazily with ``st.cache_resource``.

Costs are stored as integer micro-USD; conversion to USD happens here so that every view shows dollars.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from psycopg_pool import ConnectionPool

from core.savings import SavingsTotals
from core.settings import get_settings
from sql.repository import ATTEMPTS_BY_ID_SQL, EVAL_BY_ID_SQL, REQUEST_BY_ID_SQL

# Short enough that the demo's replayed traffic shows up within a refresh, long enough that
# switching views and moving filters back and forth is served from cache.
CACHE_TTL_S = 30
STATEMENT_TIMEOUT_MS = 15_000
WORK_MEM = "64MB"
# How long the first page waits for the database before it says it cannot reach it.
POOL_OPEN_TIMEOUT_S = 5
MICRO = 1_000_000.0
FAILED_MODEL_LABEL = "(failed)"


@dataclass(frozen=True)
class Filters:
    """The sidebar's filters. ``end`` is inclusive; empty tuples mean "all"."""

    start: date
    end: date
    models: tuple[str, ...] = field(default=())
    difficulties: tuple[str, ...] = field(default=())
    tenants: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"date range ends ({self.end}) before it starts ({self.start})")

    @property
    def bucket(self) -> str:
        """Time bucket of the trend charts: hours when one day is selected (a demo's traffic), else days."""
        return "hour" if self.start == self.end else "day"

    @property
    def start_ts(self) -> datetime:
        return datetime.combine(self.start, time.min, tzinfo=UTC)

    @property
    def end_ts(self) -> datetime:
        """Exclusive upper bound: midnight after the last selected day (UTC)."""
        return datetime.combine(self.end + timedelta(days=1), time.min, tzinfo=UTC)


def _configure(conn: Any) -> None:
    # Day buckets are UTC days whatever the server's timezone; runaway queries are cut off.
    conn.execute("SET TIME ZONE 'UTC'")
    conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
    # The latency percentiles sort every call in range: in memory, not in temporary files; and no JIT
    # compilation, which costs more than it saves on these short queries.
    conn.execute(f"SET work_mem = '{WORK_MEM}'")
    conn.execute("SET jit = off")


@st.cache_resource(show_spinner=False)
def get_pool(dsn: str) -> ConnectionPool:
    """One small pool per DSN for the whole Streamlit server process."""
    pool = ConnectionPool(
        dsn,
        min_size=1,
        max_size=get_settings().pg_pool_max,
        kwargs={"autocommit": True},
        configure=_configure,
        open=False,
        name="dashboard",
    )
    try:
        pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
    except Exception:
        pool.close()  # else its workers keep trying to connect after every failed page load
        raise
    return pool


def _fetch(dsn: str, query: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
    with get_pool(dsn).connection() as conn, conn.cursor() as cur:
        cur.execute(query, params or {})
        columns = [column.name for column in cur.description]
        frame = pd.DataFrame(cur.fetchall(), columns=columns)
    if "period" in frame.columns:
        # Naive UTC: Vega-Lite would otherwise shift the buckets into the viewer's timezone.
        frame["period"] = pd.to_datetime(frame["period"], utc=True).dt.tz_convert(None)
    return frame


def _sidebar_clauses(filters: Filters, model_column: str, difficulty_column: str,
                     tenant_column: str) -> tuple[list[str], dict[str, Any]]:
    """The sidebar's model, difficulty and tenant choices as clauses on the given columns, values bound."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for column, name, chosen in ((model_column, "models", filters.models),
                                 (difficulty_column, "difficulties", filters.difficulties),
                                 (tenant_column, "tenants", filters.tenants)):
        if chosen:
            clauses.append(f"{column} = ANY(%({name})s)")
            params[name] = list(chosen)
    return clauses, params


def _request_where(filters: Filters, alias: str = "r") -> tuple[str, dict[str, Any]]:
    """WHERE clause over ``requests``: created_at range, answering model, predicted difficulty, tenant.

    Column names come from this module only; every value is a bound parameter.
    """
    chosen, chosen_params = _sidebar_clauses(filters, f"{alias}.final_model", f"{alias}.difficulty",
                                             f"{alias}.tenant")
    clauses = [f"{alias}.created_at >= %(start)s", f"{alias}.created_at < %(end)s", *chosen]
    return " AND ".join(clauses), {"start": filters.start_ts, "end": filters.end_ts, "bucket": filters.bucket,
                                   **chosen_params}


def _scoped_where(
    filters: Filters, time_column: str, model_column: str, difficulty_column: str | None
) -> tuple[str, dict[str, Any], bool]:
    """WHERE clause for attempts / evaluations; says whether ``requests r`` must be joined (tenant, difficulty)."""
    needs_requests = bool(filters.tenants) or (bool(filters.difficulties) and difficulty_column is None)
    chosen, chosen_params = _sidebar_clauses(filters, model_column, difficulty_column or "r.difficulty", "r.tenant")
    clauses = [f"{time_column} >= %(start)s", f"{time_column} < %(end)s", *chosen]
    params = {"start": filters.start_ts, "end": filters.end_ts, "bucket": filters.bucket, **chosen_params}
    return " AND ".join(clauses), params, needs_requests


# The hourly rollups (migration 0008): exact sums kept by triggers, a few rows per hour instead of every request.
# Writers add signed deltas; a read sums rollup + delta, so it sees every committed write.
_REQUESTS_ROLLUP = "(SELECT * FROM requests_hourly UNION ALL SELECT * FROM requests_hourly_delta) AS h"
_ATTEMPTS_ROLLUP = "(SELECT * FROM attempts_hourly UNION ALL SELECT * FROM attempts_hourly_delta) AS h"
_EVALS_ROLLUP = "(SELECT * FROM evals_hourly UNION ALL SELECT * FROM evals_hourly_delta) AS e"


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def fold_rollups(dsn: str) -> bool:
    """Move the writers' deltas into the rollups, at most once per cache period (a read is exact either way;
    folding keeps the delta tables short)."""
    # Every rollup the views read, in one round trip: the hourly sums (0008), the latency histograms (0012)
    # and the fallback calls (0013).
    folded = _fetch(dsn, "SELECT dashboard_fold_rollups() AS hourly, dashboard_fold_latency() AS latency,"
                         " dashboard_fold_fallback_rollup() AS fallback").iloc[0]
    return bool(folded["hourly"]) and bool(folded["latency"]) and bool(folded["fallback"])


def _rollup_where(filters: Filters) -> tuple[str, dict[str, Any]]:
    """WHERE clause over a rollup ``h``: the same selection as :func:`_request_where` on the requests (hours
    are UTC and the range is whole UTC days, so an hour is either wholly in or wholly out)."""
    chosen, chosen_params = _sidebar_clauses(filters, "h.final_model", "h.difficulty", "h.tenant")
    clauses = ["h.hour >= %(start)s", "h.hour < %(end)s", *chosen]
    return " AND ".join(clauses), {"start": filters.start_ts, "end": filters.end_ts, "bucket": filters.bucket,
                                   **chosen_params}


def _rollup_fetch(dsn: str, query: str, params: dict[str, Any]) -> pd.DataFrame:
    fold_rollups(dsn)
    return _fetch(dsn, query, params)


# The savings sums of sql.repository.savings_totals_columns, from the rollup's per-group sums.
_ROLLUP_SAVINGS_COLUMNS = ",\n".join(
    f"coalesce(sum(h.{name}), 0)::bigint AS s_{name}"
    for name in ("requests", "spend_micro_usd", "comparable_requests", "comparable_spend_micro_usd",
                 "baseline_micro_usd", "graded", "correct", "baseline_correct", "overhead_micro_usd"))


# ----------------------------------------------------------------------------- filter choices


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def data_bounds(dsn: str) -> tuple[date, date] | None:
    """First and last UTC day holding requests or evaluations; ``None`` when the database is empty."""
    frame = _fetch(
        dsn,
        """
        SELECT min(t)::date AS first_day, max(t)::date AS last_day FROM (
            SELECT min(created_at) AS t FROM requests UNION ALL SELECT max(created_at) FROM requests
            UNION ALL SELECT min(evaluated_at) FROM model_eval UNION ALL SELECT max(evaluated_at) FROM model_eval
        ) AS edges
        """,
    )
    first, last = frame.iloc[0]["first_day"], frame.iloc[0]["last_day"]
    if first is None or pd.isna(first):
        return None
    return first, last


def _distinct_values_sql(kind: str, table: str, column: str) -> str:
    """Distinct values of an indexed column by skipping along its index (one probe per value), not a scan."""
    return f"""
        SELECT '{kind}' AS kind, v AS value FROM (
            WITH RECURSIVE walk AS (
                (SELECT {column} AS v FROM {table} WHERE {column} IS NOT NULL ORDER BY {column} LIMIT 1)
                UNION ALL
                SELECT (SELECT {column} FROM {table} WHERE {column} > walk.v ORDER BY {column} LIMIT 1)
                FROM walk WHERE walk.v IS NOT NULL
            ) SELECT v FROM walk WHERE v IS NOT NULL
        ) AS {kind}_{table}"""


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def filter_choices(dsn: str) -> dict[str, list[str]]:
    """Distinct models, difficulties and tenants, for the sidebar's multiselects.

    Each comes from a column that leads an index, so this stays a few milliseconds however many rows there are.
    """
    parts = [
        _distinct_values_sql("model", "requests", "final_model"),
        _distinct_values_sql("model", "request_attempts", "model"),
        _distinct_values_sql("model", "model_eval", "model"),
        _distinct_values_sql("difficulty", "requests", "difficulty"),
        _distinct_values_sql("tenant", "requests", "tenant"),
    ]
    frame = _fetch(dsn, "\nUNION ALL".join(parts))
    choices: dict[str, set[str]] = {"model": set(), "difficulty": set(), "tenant": set()}
    for kind, value in frame.itertuples(index=False):
        choices[kind].add(value)
    order = {"simple": 0, "medium": 1, "complex": 2}
    return {
        "model": sorted(choices["model"]),
        "difficulty": sorted(choices["difficulty"], key=lambda label: (order.get(label, 99), label)),
        "tenant": sorted(choices["tenant"]),
    }


# ----------------------------------------------------------------------------- overview

_SPEND_COLUMNS = f"""
    coalesce(sum(h.requests), 0)::bigint AS requests,
    coalesce(sum(h.requests) FILTER (WHERE h.status = 'ok'), 0)::bigint AS ok_requests,
    coalesce(sum(h.spend_micro_usd), 0)::float8 / {MICRO} AS spend_usd,
    coalesce(sum(h.comparable_spend_micro_usd), 0)::float8 / {MICRO} AS comparable_spend_usd,
    coalesce(sum(h.baseline_micro_usd), 0)::float8 / {MICRO} AS counterfactual_spend_usd,
    coalesce(sum(h.comparable_requests), 0)::bigint AS comparable_requests,
    coalesce(sum(h.spend_micro_usd), 0)::float8 / {MICRO} / nullif(sum(h.requests), 0)::bigint AS cost_per_request_usd,
    1 - sum(h.comparable_spend_micro_usd)::float8 / nullif(sum(h.baseline_micro_usd), 0) AS savings_ratio,
    coalesce(sum(h.escalated), 0)::bigint AS escalated,
    coalesce(sum(h.fell_back), 0)::bigint AS fell_back
"""


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def overview(dsn: str, filters: Filters) -> tuple[dict[str, Any], pd.DataFrame]:
    """Whole-range totals and the same figures per time bucket, from one pass over the requests.

    Savings = 1 − spend / counterfactual spend, over the requests that have a counterfactual (a failed
    request has none). ``counterfactual_model`` is the expensive model the sink priced against.
    """
    where, params = _rollup_where(filters)
    frame = _rollup_fetch(
        dsn,
        f"""
        SELECT date_trunc(%(bucket)s, h.hour) AS period, GROUPING(date_trunc(%(bucket)s, h.hour)) = 1
                   AS is_total,
               {_SPEND_COLUMNS},
               max(h.counterfactual_model) AS counterfactual_model,
               {_ROLLUP_SAVINGS_COLUMNS},
               coalesce(sum(h.unrecorded), 0)::bigint AS unrecorded,
               coalesce(sum(h.tokens_in), 0)::bigint AS tokens_in,
               coalesce(sum(h.tokens_out), 0)::bigint AS tokens_out
        FROM {_REQUESTS_ROLLUP} WHERE {where}
        GROUP BY GROUPING SETS ((date_trunc(%(bucket)s, h.hour)), ())
        -- A group whose requests were all rewritten elsewhere sums to nothing: not a bucket of its own.
        HAVING coalesce(sum(h.requests), 0) <> 0 OR GROUPING(date_trunc(%(bucket)s, h.hour)) = 1
        ORDER BY is_total, period
        """,
        params,
    )
    totals = frame[frame["is_total"]].iloc[0].drop(["period", "is_total"]).to_dict()
    totals["savings"] = SavingsTotals.from_row(totals, prefix="s_")
    daily = frame[~frame["is_total"]].drop(columns=["is_total"]).reset_index(drop=True)
    # Per bucket, the same definition as the totals (core/savings.py).
    per_bucket = [SavingsTotals.from_row(row, prefix="s_") for row in daily.to_dict("records")]
    daily["savings_ratio"] = [t.savings_ratio for t in per_bucket]
    daily["accuracy_delta"] = [t.accuracy_delta for t in per_bucket]
    daily["graded"] = [t.graded for t in per_bucket]
    daily["overhead_usd"] = [t.overhead_micro_usd / MICRO for t in per_bucket]
    return totals, daily


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def simulated_requests(dsn: str, filters: Filters) -> int:
    """Requests whose timestamps the demo spread over simulated days (``--simulate-days``)."""
    where, params = _rollup_where(filters)
    frame = _rollup_fetch(dsn, f"SELECT coalesce(sum(h.requests), 0)::bigint AS n FROM {_REQUESTS_ROLLUP} "
                               f"WHERE {where} AND h.simulated", params)
    return int(frame.iloc[0]["n"])


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def savings_by_router(dsn: str, filters: Filters) -> pd.DataFrame:
    """The savings sums per deciding router (classifier and artifact version), newest first."""
    where, params = _rollup_where(filters)
    return _rollup_fetch(
        dsn,
        f"""
        SELECT h.classifier, h.router_version, max(h.counterfactual_model) AS counterfactual_model,
               min(h.first_created) AS first_request, {_ROLLUP_SAVINGS_COLUMNS}
        FROM {_REQUESTS_ROLLUP} WHERE {where}
        GROUP BY 1, 2 HAVING sum(h.requests) <> 0 ORDER BY max(h.last_created) DESC
        """,
        params,
    )


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def billed_by_model(dsn: str, filters: Filters) -> pd.DataFrame:
    """Spend attributed to every model billed, attempt by attempt, for the requests the filters select
    (so the models' spend sums to the Overview's spend)."""
    where, params = _rollup_where(filters)
    return _rollup_fetch(
        dsn,
        f"""
        SELECT h.model, sum(h.calls)::bigint AS calls,
               coalesce(sum(h.calls) FILTER (WHERE h.status = 'rejected'), 0)::bigint AS rejected,
               coalesce(sum(h.cost_micro_usd), 0)::bigint AS billed_micro_usd
        FROM {_ATTEMPTS_ROLLUP}
        WHERE {where}
        GROUP BY h.model HAVING sum(h.calls) <> 0 ORDER BY billed_micro_usd DESC
        """,
        params,
    )


# ----------------------------------------------------------------------------- model mix


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def mix_daily(dsn: str, filters: Filters) -> pd.DataFrame:
    """Per day, answering model and predicted difficulty: request counts (one pass, both breakdowns)."""
    where, params = _rollup_where(filters)
    return _rollup_fetch(
        dsn,
        f"""
        SELECT date_trunc(%(bucket)s, h.hour) AS period,
               coalesce(h.final_model, %(failed)s) AS model, h.difficulty,
               sum(h.requests)::bigint AS requests,
               coalesce(sum(h.spend_micro_usd), 0)::float8 / {MICRO} AS spend_usd
        FROM {_REQUESTS_ROLLUP} WHERE {where}
        GROUP BY 1, 2, 3 HAVING sum(h.requests) <> 0 ORDER BY 1, 2, 3
        """,
        {**params, "failed": FAILED_MODEL_LABEL},
    )


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def routed_vs_final(dsn: str, filters: Filters) -> pd.DataFrame:
    """How often the model the policy chose is the one that answered."""
    where, params = _rollup_where(filters)
    return _rollup_fetch(
        dsn,
        f"""
        SELECT h.routed_model, coalesce(h.final_model, %(failed)s) AS final_model, sum(h.requests)::bigint AS requests
        FROM {_REQUESTS_ROLLUP} WHERE {where}
        GROUP BY 1, 2 HAVING sum(h.requests) <> 0 ORDER BY 1, 2
        """,
        {**params, "failed": FAILED_MODEL_LABEL},
    )


# ----------------------------------------------------------------------------- latency


def _attempts_from(needs_requests: bool) -> str:
    return "request_attempts a JOIN requests r ON r.request_id = a.request_id" if needs_requests else "request_attempts a"


# Latency percentiles come from the daily histograms of migration 0012 (relative-error bins: bin i holds
# (γ^(i-1), γ^i] ms and reads back as 2γ^i/(γ+1), within 0.99 % of every latency in it), so a view sums a few
# thousand bins per day instead of sorting every call in range. The one-day view's hourly trend reads the raw calls.
LATENCY_BIN_GAMMA = 1.02
ZERO_LATENCY_BIN = -2_147_483_648
_LATENCY_HISTOGRAM = "(SELECT * FROM latency_daily UNION ALL SELECT * FROM latency_daily_delta) AS h"


def latency_bin_value(bins: np.ndarray) -> np.ndarray:
    """The latency (ms) a histogram bin reads back as: within 0.99 % of every latency in the bin."""
    bins = np.asarray(bins, dtype=np.int64)
    values = 2.0 * np.power(LATENCY_BIN_GAMMA, bins.astype(float)) / (LATENCY_BIN_GAMMA + 1.0)
    return np.where(bins == ZERO_LATENCY_BIN, 0.0, values)


def histogram_percentiles(counts: pd.DataFrame, by: list[str], quantiles: dict[str, float]) -> pd.DataFrame:
    """Percentiles per group of ``by`` from rows (``*by``, ``bin``, ``n``), as ``percentile_cont`` defines them
    (the value at rank q·(N−1), interpolated between the two ranks around it), each rank read from its bin.
    With no ``by``, one row (``None`` where there is nothing to rank)."""
    keys = by or ["_all"]
    counts = counts[counts["n"] > 0].assign(_all=0).sort_values([*keys, "bin"])
    if counts.empty:
        return pd.DataFrame([dict.fromkeys(quantiles)] if not by else [], columns=[*by, *quantiles])
    groups = counts.groupby(keys, sort=False, dropna=False)
    cumulative = groups["n"].cumsum().to_numpy(dtype=np.int64)
    total = groups["n"].transform("sum").to_numpy(dtype=np.int64)
    values = latency_bin_value(counts["bin"].to_numpy())
    frame = counts[keys].copy()
    columns = {}
    for name, quantile in quantiles.items():
        rank = quantile * (total - 1)
        low, high = np.floor(rank), np.ceil(rank)
        # the value at 0-based rank k lies in the first bin whose cumulative count exceeds k
        frame["_low"] = np.where(cumulative > low, values, np.nan)
        frame["_high"] = np.where(cumulative > high, values, np.nan)
        frame["_fraction"] = rank - low
        first = frame.groupby(keys, sort=True, dropna=False)[["_low", "_high", "_fraction"]].first()
        columns[name] = first["_low"] + first["_fraction"] * (first["_high"] - first["_low"])
    result = pd.DataFrame(columns).reset_index()
    if not by:
        return result[list(quantiles)]
    return result[[*by, *quantiles]]


def _histogram_where(filters: Filters, measures: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """The sidebar's selection over the histograms: whole UTC days, the model (called or answering, as the
    measure says), the request's difficulty and tenant."""
    chosen, chosen_params = _sidebar_clauses(filters, "h.model", "h.difficulty", "h.tenant")
    clauses = ["h.day >= %(first_day)s", "h.day <= %(last_day)s", "h.measure = ANY(%(measures)s)", *chosen]
    return " AND ".join(clauses), {"first_day": filters.start, "last_day": filters.end, "measures": list(measures),
                                   **chosen_params}


def _histogram_counts(dsn: str, filters: Filters, measures: tuple[str, ...], by: tuple[str, ...]) -> pd.DataFrame:
    """Calls or requests per bin and group of ``by`` (select expressions) in the selection."""
    where, params = _histogram_where(filters, measures)
    positions = ", ".join(str(position) for position in range(1, len(by) + 2))
    return _rollup_fetch(
        dsn,
        f"SELECT {', '.join(by)}, h.bin, sum(h.n)::bigint AS n FROM {_LATENCY_HISTOGRAM} WHERE {where} "
        f"GROUP BY {positions} HAVING sum(h.n) <> 0",
        params,
    )


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def latency_by_model(dsn: str, filters: Filters) -> pd.DataFrame:
    """p50/p95/p99 per model over answered calls (status ok or rejected; errors are counted, not timed)."""
    counts = _histogram_counts(dsn, filters, ("call", "call_error"), ("h.measure", "h.model"))
    if counts.empty:
        return pd.DataFrame(columns=["model", "calls", "errors", "p50_ms", "p95_ms", "p99_ms"])
    per_measure = counts.pivot_table(index="model", columns="measure", values="n", aggfunc="sum", fill_value=0)
    answered = counts[counts["measure"] == "call"]
    percentiles = histogram_percentiles(answered, ["model"], {"p50_ms": 0.50, "p95_ms": 0.95, "p99_ms": 0.99})
    frame = pd.DataFrame({
        "model": per_measure.index,
        "calls": per_measure.get("call", pd.Series(0, index=per_measure.index)).to_numpy(dtype=np.int64),
        "errors": per_measure.get("call_error", pd.Series(0, index=per_measure.index)).to_numpy(dtype=np.int64),
    })
    return frame.merge(percentiles, on="model", how="left").sort_values("model").reset_index(drop=True)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def latency_daily(dsn: str, filters: Filters) -> pd.DataFrame:
    """Per day (per hour on a one-day range) and model: p50 and p95 of answered calls."""
    if filters.bucket == "day":
        counts = _histogram_counts(dsn, filters, ("call",), ("h.day AS period", "h.model"))
        frame = histogram_percentiles(counts, ["period", "model"], {"p50_ms": 0.50, "p95_ms": 0.95})
        frame["period"] = pd.to_datetime(frame["period"])
        return frame
    # One day in hours: that day's calls alone, read exactly from the raw rows (a day's calls, not the range's).
    where, params, needs_requests = _scoped_where(filters, "a.started_at", "a.model", None)
    return _fetch(
        dsn,
        f"""
        SELECT date_trunc(%(bucket)s, a.started_at) AS period, a.model,
               percentile_cont(0.50) WITHIN GROUP (ORDER BY a.latency_ms) AS p50_ms,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY a.latency_ms) AS p95_ms
        FROM {_attempts_from(needs_requests)} WHERE {where} AND a.status <> 'error'
        GROUP BY 1, 2 ORDER BY 1, 2
        """,
        params,
    )


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def end_to_end_latency(dsn: str, filters: Filters) -> dict[str, Any]:
    """p50/p95/p99 of whole requests (every attempt of the chain), as the caller saw it; time to first token of
    streamed requests."""
    counts = _histogram_counts(dsn, filters, ("request", "ttft"), ("h.measure",))
    requests = counts[counts["measure"] == "request"]
    ttft = counts[counts["measure"] == "ttft"]
    figures: dict[str, Any] = {"requests": int(requests["n"].sum()), "streamed": int(ttft["n"].sum())}
    figures.update(histogram_percentiles(requests, [], {"p50_ms": 0.50, "p95_ms": 0.95, "p99_ms": 0.99})
                   .iloc[0].to_dict())
    figures.update(histogram_percentiles(ttft, [], {"ttft_p50_ms": 0.50, "ttft_p95_ms": 0.95}).iloc[0].to_dict())
    return figures


# ----------------------------------------------------------------------------- quality vs cost


def _eval_from(needs_requests: bool) -> str:
    return "model_eval e JOIN requests r ON r.request_id = e.request_id" if needs_requests else "model_eval e"


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def quality_daily(dsn: str, filters: Filters) -> pd.DataFrame:
    """Per day from ``model_eval``: graded answers, pass rate, cost and cost per graded answer."""
    if not filters.tenants:
        # numeric sums divided as avg() divides them: the same figures as over the graded rows.
        where, params, _ = _scoped_where(filters, "e.hour", "e.model", "e.difficulty")
        return _rollup_fetch(
            dsn,
            f"""
            SELECT date_trunc(%(bucket)s, e.hour) AS period,
                   sum(e.graded)::bigint AS graded,
                   (sum(e.correct) / sum(e.graded))::float8 AS pass_rate,
                   sum(e.cost_micro_usd)::float8 / {MICRO} AS cost_usd,
                   (sum(e.cost_micro_usd) / sum(e.graded))::float8 / {MICRO} AS cost_per_answer_usd
            FROM {_EVALS_ROLLUP} WHERE {where}
            GROUP BY 1 HAVING sum(e.graded) <> 0 ORDER BY 1
            """,
            params,
        )
    # The tenant is the request's: join the graded rows to their requests.
    where, params, needs_requests = _scoped_where(filters, "e.evaluated_at", "e.model", "e.difficulty")
    return _fetch(
        dsn,
        f"""
        SELECT date_trunc(%(bucket)s, e.evaluated_at) AS period,
               count(*)::bigint AS graded,
               avg(e.correct::int)::float8 AS pass_rate,
               sum(e.cost_micro_usd)::float8 / {MICRO} AS cost_usd,
               avg(e.cost_micro_usd)::float8 / {MICRO} AS cost_per_answer_usd
        FROM {_eval_from(needs_requests)} WHERE {where}
        GROUP BY 1 ORDER BY 1
        """,
        params,
    )


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def quality_by_model(dsn: str, filters: Filters) -> pd.DataFrame:
    """Per model and per (model, difficulty): pass rate and average cost of graded answers."""
    if not filters.tenants:
        where, params, _ = _scoped_where(filters, "e.hour", "e.model", "e.difficulty")
        return _rollup_fetch(
            dsn,
            f"""
            SELECT e.model, coalesce(e.difficulty, 'all') AS difficulty,
                   sum(e.graded)::bigint AS graded,
                   (sum(e.correct) / sum(e.graded))::float8 AS pass_rate,
                   (sum(e.cost_micro_usd) / sum(e.graded))::float8 / {MICRO} AS cost_per_answer_usd,
                   GROUPING(e.difficulty) = 1 AS is_model_total
            FROM {_EVALS_ROLLUP} WHERE {where}
            GROUP BY GROUPING SETS ((e.model), (e.model, e.difficulty)) HAVING sum(e.graded) <> 0
            ORDER BY e.model, is_model_total DESC, difficulty
            """,
            params,
        )
    where, params, needs_requests = _scoped_where(filters, "e.evaluated_at", "e.model", "e.difficulty")
    return _fetch(
        dsn,
        f"""
        SELECT e.model, coalesce(e.difficulty, 'all') AS difficulty,
               count(*)::bigint AS graded,
               avg(e.correct::int)::float8 AS pass_rate,
               avg(e.cost_micro_usd)::float8 / {MICRO} AS cost_per_answer_usd,
               GROUPING(e.difficulty) = 1 AS is_model_total
        FROM {_eval_from(needs_requests)} WHERE {where}
        GROUP BY GROUPING SETS ((e.model), (e.model, e.difficulty))
        ORDER BY e.model, is_model_total DESC, difficulty
        """,
        params,
    )


# ----------------------------------------------------------------------------- escalations and fallbacks


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def escalation_daily(dsn: str, filters: Filters) -> pd.DataFrame:
    """Per day: requests, escalated and fell-back counts and rates (from the requests' flags)."""
    where, params = _rollup_where(filters)
    # numeric sum / numeric count: the same division avg(flag::int) makes, so the same rates to the last digit.
    return _rollup_fetch(
        dsn,
        f"""
        SELECT date_trunc(%(bucket)s, h.hour) AS period,
               sum(h.requests)::bigint AS requests,
               sum(h.escalated)::bigint AS escalated,
               sum(h.fell_back)::bigint AS fell_back,
               coalesce(sum(h.requests) FILTER (WHERE h.status = 'failed'), 0)::bigint AS failed,
               (sum(h.escalated) / sum(h.requests))::float8 AS escalation_rate,
               (sum(h.fell_back) / sum(h.requests))::float8 AS fallback_rate
        FROM {_REQUESTS_ROLLUP} WHERE {where}
        GROUP BY 1 HAVING sum(h.requests) <> 0 ORDER BY 1
        """,
        params,
    )


# A rejected answer that led to another call is an escalation; a failed call that did is a fallback.
_KIND_SQL = "CASE WHEN a.status = 'rejected' THEN 'escalation' ELSE 'fallback' END"


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def transitions(dsn: str, filters: Filters) -> pd.DataFrame:
    """Each hop of an escalation or fallback chain: kind, from which model, to which, why, how often."""
    where, params = _rollup_where(filters)
    return _rollup_fetch(
        dsn,
        f"""
        SELECT {_KIND_SQL.replace("a.", "h.")} AS kind, h.model AS from_model, h.next_model AS to_model,
               coalesce(h.next_reason_kind, 'other') AS reason_kind, sum(h.calls)::bigint AS hops,
               min(h.example_reason) AS example_reason
        FROM {_ATTEMPTS_ROLLUP}
        WHERE h.next_model IS NOT NULL AND {where}
        GROUP BY 1, 2, 3, 4 HAVING sum(h.calls) <> 0 ORDER BY hops DESC, kind, from_model
        """,
        params,
    )


# Fallback calls (migration 0013): the calls a fallback hop named after a failed call or an open circuit.
_FALLBACK_ROLLUP = "(SELECT * FROM fallback_hourly UNION ALL SELECT * FROM fallback_hourly_delta) AS h"


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def fallback_spend_daily(dsn: str, filters: Filters) -> pd.DataFrame:
    """Per bucket: spend, fallback spend (what fallback calls billed), its share of spend and the fallback calls,
    for the requests the filters select (the Overview's spend is the denominator)."""
    where, params = _rollup_where(filters)
    return _rollup_fetch(
        dsn,
        f"""
        WITH spend AS (
            SELECT date_trunc(%(bucket)s, h.hour) AS period, sum(h.spend_micro_usd) AS spend
            FROM {_REQUESTS_ROLLUP} WHERE {where} GROUP BY 1 HAVING sum(h.requests) <> 0
        ), fallback AS (
            SELECT date_trunc(%(bucket)s, h.hour) AS period, sum(h.calls) AS calls, sum(h.cost_micro_usd) AS cost
            FROM {_FALLBACK_ROLLUP} WHERE {where} GROUP BY 1
        )
        SELECT s.period, s.spend::bigint AS spend_micro_usd, coalesce(f.cost, 0)::bigint AS fallback_micro_usd,
               coalesce(f.calls, 0)::bigint AS fallback_calls,
               s.spend::float8 / {MICRO} AS spend_usd, coalesce(f.cost, 0)::float8 / {MICRO} AS fallback_usd,
               coalesce(f.cost, 0)::float8 / nullif(s.spend, 0) AS fallback_share
        FROM spend s LEFT JOIN fallback f USING (period) ORDER BY 1
        """,
        params,
    )


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def fallback_spend_by_path(dsn: str, filters: Filters) -> pd.DataFrame:
    """Fallback calls and their spend per path: the model that failed or was skipped, why, the model called."""
    where, params = _rollup_where(filters)
    return _rollup_fetch(
        dsn,
        f"""
        SELECT h.from_model, h.reason_kind, h.model, sum(h.calls)::bigint AS calls,
               sum(h.cost_micro_usd)::bigint AS fallback_micro_usd,
               sum(h.cost_micro_usd)::float8 / {MICRO} AS fallback_usd
        FROM {_FALLBACK_ROLLUP} WHERE {where}
        GROUP BY 1, 2, 3 HAVING sum(h.attempts) <> 0 ORDER BY fallback_micro_usd DESC, 1, 2, 3
        """,
        params,
    )


# ----------------------------------------------------------------------------- request explorer

EXPLORER_LIMIT = 200


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def search_requests(dsn: str, filters: Filters, text: str, limit: int = EXPLORER_LIMIT) -> pd.DataFrame:
    """Newest requests matching the filters whose id equals ``text`` or whose prompt contains it."""
    where, params = _request_where(filters)
    text = text.strip()
    search = ""
    if text:
        search = " AND (r.request_id = %(text)s OR r.prompt ILIKE %(pattern)s)"
        params.update(text=text, pattern=_like_pattern(text))
    return _fetch(
        dsn,
        f"""
        SELECT r.request_id, r.created_at, r.tenant, r.difficulty, r.routed_model, r.final_model, r.status,
               r.attempt_count, r.cost_micro_usd::float8 / {MICRO} AS cost_usd, r.latency_ms,
               left(r.prompt, 160) AS prompt
        FROM requests r WHERE {where}{search}
        ORDER BY r.created_at DESC LIMIT %(limit)s
        """,
        {**params, "limit": limit},
    )


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def request_detail(dsn: str, request_id: str) -> dict[str, Any] | None:
    """One request: its decision, outcome, attempts (in chain order) and grading, if any (the repository's
    queries, as the API's ``GET /requests/{id}`` reads them)."""
    params = {"id": request_id}
    request = _fetch(dsn, REQUEST_BY_ID_SQL, params)
    if request.empty:
        return None
    attempts = _fetch(dsn, ATTEMPTS_BY_ID_SQL, params)
    grading = _fetch(dsn, EVAL_BY_ID_SQL, params)
    for frame in (request, attempts, grading):
        frame["cost_usd"] = frame["cost_micro_usd"].astype("float64") / MICRO
    request["counterfactual_cost_usd"] = request["counterfactual_cost_micro_usd"].astype("float64") / MICRO
    return {
        "request": request.iloc[0].to_dict(),
        "attempts": attempts.drop(columns=["request_id", "cost_micro_usd"]),
        "grading": None if grading.empty else grading.iloc[0].drop(["request_id", "cost_micro_usd"]).to_dict(),
    }


def clear_caches() -> None:
    """Forget every cached query result (the pool stays)."""
    st.cache_data.clear()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def budget_report(dsn: str) -> pd.DataFrame:
    """Spend against budget this period, per tenant and per active key (sql.keys' report query)."""
    from sql.keys import BUDGET_REPORT_SQL, budget_report_params  # noqa: PLC0415

    return _fetch(dsn, BUDGET_REPORT_SQL, budget_report_params())
