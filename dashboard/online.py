"""The experiments view: per arm cost, pass rate and latency with confidence intervals, savings against the control
arm and the quality guard's verdict, computed by ``training.online_report`` (the same figures as its command)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

import pandas as pd
import psycopg
import streamlit as st

from dashboard import queries as q
from training.online_report import report_from_db


@st.cache_data(ttl=q.CACHE_TTL_S, show_spinner=False)
def experiment_choices(dsn: str) -> pd.DataFrame:
    return q._fetch(dsn, "SELECT experiment_id, ended_at IS NULL AS running FROM experiments"
                         " ORDER BY (ended_at IS NULL) DESC, created_at DESC")


@st.cache_data(ttl=q.CACHE_TTL_S, show_spinner=False)
def feedback_sources(dsn: str) -> list[str]:
    return list(q._fetch(dsn, "SELECT DISTINCT feedback_source FROM model_eval ORDER BY 1")["feedback_source"])


@st.cache_data(ttl=q.CACHE_TTL_S, show_spinner=False)
def experiment_report(dsn: str, experiment_id: str, sources: tuple[str, ...], confidence: float, margin: float,
                      since: datetime, until: datetime) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        return report_from_db(conn, experiment_id, list(sources) or None, confidence=confidence, margin=margin,
                              since=since, until=until, resamples=1000)


def _interval(values: list[float] | tuple[float, float] | None, scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    if not values:
        return "–"
    return f"[{fmt.format(values[0] * scale)}, {fmt.format(values[1] * scale)}]"


def experiments_view(dsn: str, filters: q.Filters) -> None:
    st.header("Experiments (A/B)")
    choices = experiment_choices(dsn)
    if choices.empty:
        st.info("No experiment yet. Start one with `python -m training.experiments create EXP --arm "
                "control:control:0.1:MODEL --arm router:router:0.1`; results appear as graded feedback arrives "
                "(`POST /v1/feedback`).", icon="ℹ️")
        return
    labels = {row.experiment_id: f"{row.experiment_id} ({'running' if row.running else 'ended'})"
              for row in choices.itertuples()}
    left, middle, right = st.columns(3)
    experiment_id = left.selectbox("Experiment", list(labels), format_func=labels.get, key="experiment")
    sources = middle.multiselect("Feedback sources", feedback_sources(dsn), key="feedback_sources",
                                 help="Grades counted (a request's latest grade from these); empty: every source.")
    confidence = right.select_slider("Confidence (one-sided)", [0.8, 0.9, 0.95, 0.975, 0.99], value=0.95,
                                     key="confidence")
    since = datetime.combine(filters.start, time.min, tzinfo=UTC)
    until = datetime.combine(filters.end + timedelta(days=1), time.min, tzinfo=UTC)
    report = experiment_report(dsn, experiment_id, tuple(sources), confidence, 0.01, since, until)
    if not report["requests"]:
        st.info("No request of this experiment in the date range.", icon="ℹ️")
        return

    rows = []
    for name, arm in report["arms"].items():
        rows.append({"arm": name, "kind": arm["kind"], "requests": arm["requests"], "failed": arm["failed"],
                     "cost / request (USD)": arm["cost_per_request_usd"],
                     "cost / request CI": _interval(arm["cost_per_request_ci"], 1.0, "${:.6f}"),
                     "graded": arm["graded"], "pass rate": arm["pass_rate"],
                     "pass rate CI": _interval(arm["pass_rate_ci"], 100.0, "{:.1f}%"),
                     "p50 latency (ms)": arm["latency_p50_ms"], "p95 latency (ms)": arm["latency_p95_ms"],
                     "router versions": ", ".join(arm["router_versions"])})
    st.dataframe(pd.DataFrame(rows), hide_index=True, use_container_width=True, column_config={
        "pass rate": st.column_config.NumberColumn(format="percent"),
        "cost / request (USD)": st.column_config.NumberColumn(format="$%.6f")})

    if not report["comparisons"]:
        st.warning("This experiment has no control arm to compare against.")
        return
    st.caption(f"Guard: {report['guard_rule']}.")
    for name, cmp in report["comparisons"].items():
        st.subheader(f"{name} vs {cmp['against']}")
        a, b, c = st.columns(3)
        a.metric("Savings per request", f"{100 * cmp['savings']:.1f}%" if "savings" in cmp else "–",
                 help=f"CI {_interval(cmp.get('savings_ci'), 100.0, '{:.1f}%')}")
        b.metric("Pass rate difference", f"{100 * cmp['pass_rate_diff']:+.1f} pt" if "pass_rate_diff" in cmp else "–",
                 help=f"bounds {_interval(cmp.get('pass_rate_diff_bounds'), 100.0, '{:+.1f} pt')}")
        still = cmp["graded_still_needed"]
        c.metric("Graded requests still needed",
                 "–" if still is None else str(max(still.values())),
                 help="per arm, to decide the guard at the pass rates seen so far" if still is not None else
                 "not reachable at the pass rates seen so far (or no grades yet)")
        verdict = cmp["guard"]
        message = f"Quality guard for {name}: **{verdict}** at {100 * confidence:g}% confidence."
        {"holds": st.success, "broken": st.error}.get(verdict, st.warning)(message)
