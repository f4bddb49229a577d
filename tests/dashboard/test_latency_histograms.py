"""The Latency view's histograms (migration 0012) give percentile_cont over the raw rows to within 0.99 %, and
exact counts, after every kind of write the router makes.

The same 20,000 synthetic requests and writes as ``test_rollups``; after each write, before and after the deltas
are folded, per model, per day and end to end, with and without the sidebar's filters.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import psycopg
import pytest
import streamlit as st

from dashboard import queries as q
from tests.dashboard.test_rollups import LAST_DAY, _frame, _writes, every_filter, filled  # noqa: F401 (fixture)

# The bins' relative error, (γ − 1) / (γ + 1), plus float rounding.
RELATIVE_ERROR = (q.LATENCY_BIN_GAMMA - 1) / (q.LATENCY_BIN_GAMMA + 1) + 1e-9


def raw_by_model(dsn: str, filters: q.Filters) -> pd.DataFrame:
    where, params, needs_requests = q._scoped_where(filters, "a.started_at", "a.model", None)
    return _frame(dsn, f"""
        SELECT a.model,
               count(*) FILTER (WHERE a.status <> 'error')::bigint AS calls,
               count(*) FILTER (WHERE a.status = 'error')::bigint AS errors,
               percentile_cont(0.50) WITHIN GROUP (ORDER BY a.latency_ms) FILTER (WHERE a.status <> 'error') AS p50_ms,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY a.latency_ms) FILTER (WHERE a.status <> 'error') AS p95_ms,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY a.latency_ms) FILTER (WHERE a.status <> 'error') AS p99_ms
        FROM {q._attempts_from(needs_requests)} WHERE {where} GROUP BY a.model ORDER BY a.model""", params)


def raw_daily(dsn: str, filters: q.Filters) -> pd.DataFrame:
    where, params, needs_requests = q._scoped_where(filters, "a.started_at", "a.model", None)
    return _frame(dsn, f"""
        SELECT date_trunc(%(bucket)s, a.started_at) AS period, a.model,
               percentile_cont(0.50) WITHIN GROUP (ORDER BY a.latency_ms) AS p50_ms,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY a.latency_ms) AS p95_ms
        FROM {q._attempts_from(needs_requests)} WHERE {where} AND a.status <> 'error'
        GROUP BY 1, 2 ORDER BY 1, 2""", params)


def raw_end_to_end(dsn: str, filters: q.Filters) -> dict:
    where, params = q._request_where(filters)
    return _frame(dsn, f"""
        SELECT count(*)::bigint AS requests,
               percentile_cont(0.50) WITHIN GROUP (ORDER BY r.latency_ms) AS p50_ms,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY r.latency_ms) AS p95_ms,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY r.latency_ms) AS p99_ms,
               count(r.ttft_ms)::bigint AS streamed,
               percentile_cont(0.50) WITHIN GROUP (ORDER BY r.ttft_ms) AS ttft_p50_ms,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY r.ttft_ms) AS ttft_p95_ms
        FROM requests r WHERE {where}""", params).iloc[0].to_dict()


def _close(shown: pd.DataFrame, raw: pd.DataFrame, keys: list[str], counts: list[str], what: str) -> None:
    shown = shown.sort_values(keys).reset_index(drop=True)
    raw = raw.sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(shown[keys + counts], raw[keys + counts], check_dtype=False, obj=what)
    for column in [c for c in raw.columns if c.endswith("_ms")]:
        np.testing.assert_allclose(shown[column].astype(float), raw[column].astype(float), rtol=RELATIVE_ERROR,
                                   err_msg=f"{what}: {column}")


def assert_latency_matches_raw(dsn: str, filters: q.Filters) -> None:
    st.cache_data.clear()
    _close(q.latency_by_model(dsn, filters), raw_by_model(dsn, filters), ["model"], ["calls", "errors"],
           f"per model {filters}")
    _close(q.latency_daily(dsn, filters), raw_daily(dsn, filters), ["period", "model"], [], f"per bucket {filters}")
    shown, raw = q.end_to_end_latency(dsn, filters), raw_end_to_end(dsn, filters)
    assert (shown["requests"], shown["streamed"]) == (raw["requests"], raw["streamed"]), filters
    for name in ("p50_ms", "p95_ms", "p99_ms", "ttft_p50_ms", "ttft_p95_ms"):
        if raw[name] is None or pd.isna(raw[name]):
            assert shown[name] is None or pd.isna(shown[name]), (name, filters)
        else:
            assert shown[name] == pytest.approx(raw[name], rel=RELATIVE_ERROR), (name, filters)


def test_histogram_percentiles_are_percentile_cont_within_the_bin_error() -> None:
    rng = np.random.default_rng(3)
    latencies = np.concatenate([rng.lognormal(np.log(800), 0.6, 5_000), [0.0, 0.0, 0.4, 120_000.0]])
    bins = np.where(latencies > 0, np.ceil(np.log(np.where(latencies > 0, latencies, 1)) / np.log(q.LATENCY_BIN_GAMMA)),
                    q.ZERO_LATENCY_BIN).astype(np.int64)
    counts = pd.DataFrame({"bin": bins, "n": 1}).groupby("bin", as_index=False)["n"].sum()
    quantiles = {"p0": 0.0, "p1": 0.01, "p50": 0.5, "p95": 0.95, "p99": 0.99, "p100": 1.0}
    shown = q.histogram_percentiles(counts, [], quantiles).iloc[0]
    for name, quantile in quantiles.items():
        assert shown[name] == pytest.approx(float(np.quantile(latencies, quantile)), rel=RELATIVE_ERROR), name
    assert shown["p0"] == 0.0  # zero latencies read back as zero
    assert q.histogram_percentiles(counts.iloc[0:0], [], {"p50": 0.5}).iloc[0]["p50"] is None


def test_latency_histograms_follow_every_write(filled: str) -> None:  # noqa: F811 (the fixture)
    filters = every_filter(filled)
    with psycopg.connect(filled, autocommit=True) as conn:
        conn.execute("UPDATE requests SET ttft_ms = latency_ms / 3 WHERE request_id IN "
                     "(SELECT request_id FROM requests ORDER BY request_id LIMIT 4000)")
    for each in filters:
        assert_latency_matches_raw(filled, each)
    for what, write in _writes(filled):
        with psycopg.connect(filled) as conn:
            write(conn)
        with psycopg.connect(filled, autocommit=True) as conn:
            pending = conn.execute("SELECT count(*) FROM latency_daily_delta").fetchone()[0]
        # A grade changes no latency, day, tenant, difficulty or model: it leaves the histograms alone.
        assert (pending == 0) if what == "grades arrive and change" else (pending > 0), what
        for each in filters:
            assert_latency_matches_raw(filled, each)
        with psycopg.connect(filled, autocommit=True) as conn:
            assert conn.execute("SELECT dashboard_fold_latency()").fetchone()[0]
            assert conn.execute("SELECT count(*) FROM latency_daily_delta").fetchone()[0] == 0
        for each in filters:
            assert_latency_matches_raw(filled, each)


def test_truncate_empties_the_latency_histograms(filled: str) -> None:  # noqa: F811 (the fixture)
    with psycopg.connect(filled, autocommit=True) as conn:
        conn.execute("SELECT dashboard_fold_latency()")
        conn.execute("TRUNCATE request_attempts")
        assert conn.execute("SELECT count(*) FROM latency_daily WHERE measure LIKE 'call%'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM latency_daily WHERE measure = 'request'").fetchone()[0] > 0
        conn.execute("TRUNCATE requests CASCADE")
        for table in ("latency_daily", "latency_daily_delta"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table
    st.cache_data.clear()
    assert q.latency_by_model(filled, q.Filters(start=LAST_DAY, end=LAST_DAY)).empty
