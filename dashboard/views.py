"""The dashboard's views. Each takes the DSN and the sidebar's filters and draws one page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core.savings import SavingsTotals, format_delta, format_savings, router_label
from dashboard import charts
from dashboard import queries as q
from dashboard.offline import OfflineReport, ReportError, find_reports, load_report, parse_report, report_path_in

DIFFICULTY_ORDER = ["simple", "medium", "complex"]
RESPONSE_PREVIEW_CHARS = 2_000


def usd(value: float | None) -> str:
    """Dollars with enough decimals to tell small per-request costs apart."""
    if value is None or pd.isna(value):
        return "–"
    if abs(value) >= 100:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:,.6f}".rstrip("0").rstrip(".") if value else "$0"


def percent(value: float | None) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.1%}"


def milliseconds(value: float | None) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:,.0f} ms"


def no_requests() -> None:
    st.info(
        "No requests match these filters. When the router has served traffic (for example `./scripts/demo.sh`), "
        "its requests appear here; otherwise widen the date range or clear the filters.",
        icon="ℹ️",
    )


def _period_column(filters: q.Filters):
    if filters.bucket == "hour":
        return st.column_config.DatetimeColumn("Hour (UTC)", format="YYYY-MM-DD HH:mm")
    return st.column_config.DateColumn("Day (UTC)")


# ----------------------------------------------------------------------------- Overview


def overview(dsn: str, filters: q.Filters) -> None:
    st.header("Overview")
    totals, daily = q.overview(dsn, filters)
    if not totals["requests"]:
        no_requests()
        return
    counterfactual_model = totals["counterfactual_model"] or "expensive model"
    savings: SavingsTotals = totals["savings"]
    # Four tiles a row: five clipped their labels and values at common widths.
    cols = st.columns(4)
    cols[0].metric("Requests", f"{totals['requests']:,}")
    cols[1].metric("Spend", usd(totals["spend_usd"]), help="Every model billed, attempt by attempt.")
    cols[2].metric("Always expensive", usd(totals["counterfactual_spend_usd"]),
                   help=f"What the same requests would have cost on {counterfactual_model} (its recorded answer "
                        "when replayed, else the same tokens).")
    savings_tile(cols[3], savings)
    cols = st.columns(4)
    cols[0].metric("Escalation overhead", usd(savings.overhead_micro_usd / q.MICRO),
                   help="What the attempts whose answers were not returned cost: cheap answers rejected before "
                        "an escalation, billed failures. Part of Spend.")
    cols[1].metric("Cost per request", usd(totals["cost_per_request_usd"]))
    cols[2].metric("Escalated", percent(totals["escalated"] / totals["requests"]))
    cols[3].metric("Fell back", percent(totals["fell_back"] / totals["requests"]))
    cols = st.columns(4)
    cols[0].metric("Answered", percent(totals["ok_requests"] / totals["requests"]))
    cols[1].metric("Graded", f"{savings.graded:,}",
                   help="Requests whose answer and the expensive model's answer both have a recorded grade; "
                        "live traffic and unrecorded prompts are ungraded and left out of accuracy.")
    cols[2].metric("Tokens in", f"{totals['tokens_in']:,}")
    cols[3].metric("Tokens out", f"{totals['tokens_out']:,}")
    if totals["unrecorded"]:
        st.caption(f"{totals['unrecorded']:,} requests were prompts the replayed outcomes do not hold (for example "
                   "your own prompts): the stub model answered them, labelled *unrecorded*; they are ungraded and "
                   "left out of accuracy.")
    fallback_caption(dsn, filters)
    routers_table(q.savings_by_router(dsn, filters))

    st.altair_chart(charts.spend_vs_counterfactual(daily, counterfactual_model, filters.bucket), width="stretch")
    left, right = st.columns(2)
    left.altair_chart(charts.savings_per_day(daily, filters.bucket), width="stretch")
    right.altair_chart(charts.cost_per_request(daily, filters.bucket), width="stretch")
    with st.expander(f"Figures per {filters.bucket}"):
        st.dataframe(
            daily[["period", "requests", "spend_usd", "counterfactual_spend_usd", "savings_ratio", "accuracy_delta",
                   "graded", "overhead_usd", "cost_per_request_usd", "escalated", "fell_back"]],
            hide_index=True,
            column_config={"period": _period_column(filters),
                           "requests": st.column_config.NumberColumn("Requests"),
                           "spend_usd": st.column_config.NumberColumn("Spend (USD)", format="%.4f"),
                           "counterfactual_spend_usd": st.column_config.NumberColumn("Always expensive (USD)",
                                                                                     format="%.4f"),
                           "savings_ratio": st.column_config.NumberColumn("Savings", format="percent"),
                           "accuracy_delta": st.column_config.NumberColumn("Accuracy Δ vs expensive",
                                                                           format="percent"),
                           "graded": st.column_config.NumberColumn("Graded"),
                           "overhead_usd": st.column_config.NumberColumn("Escalation overhead (USD)", format="%.4f"),
                           "cost_per_request_usd": st.column_config.NumberColumn("Cost per request (USD)",
                                                                                 format="%.6f"),
                           "escalated": st.column_config.NumberColumn("Escalated"),
                           "fell_back": st.column_config.NumberColumn("Fell back")},
        )


def fallback_totals(daily: pd.DataFrame) -> tuple[int, int, float | None]:
    """Fallback spend and calls over the range, and the spend's share of all spend (from integer micro-USD)."""
    spend, fallback = int(daily["spend_micro_usd"].sum()), int(daily["fallback_micro_usd"].sum())
    return fallback, int(daily["fallback_calls"].sum()), fallback / spend if spend else None


def fallback_caption(dsn: str, filters: q.Filters) -> None:
    """The Overview's line on fallback spend (definition: docs/dashboard.md#fallback-spend)."""
    fallback, calls, share = fallback_totals(q.fallback_spend_daily(dsn, filters))
    if not calls and not fallback:
        return
    st.caption(f"Fallback spend: {usd(fallback / q.MICRO)} ({percent(share)} of spend) on {calls:,} calls made "
               "because a model failed or its circuit was open; see *Escalations and fallbacks*.")


def savings_tile(col: Any, savings: SavingsTotals) -> None:
    """The savings figure, always with its accuracy delta against always-expensive and the graded count."""
    col.metric("Savings", format_savings(savings.savings_ratio),
               delta=f"accuracy {format_delta(savings.accuracy_delta)}, {savings.graded:,} graded",
               delta_color="off",
               help="1 − spend / always-expensive spend over the requests that have a baseline "
                    f"({savings.comparable_requests:,} of {savings.requests:,}); accuracy: the router's minus "
                    "always-expensive's on the graded requests (definition: docs/dashboard.md#savings).")


def routers_table(per_router: pd.DataFrame) -> None:
    """One savings line per deciding router, naming it and its artifact version."""
    if per_router.empty:
        return
    rows = []
    for row in per_router.to_dict("records"):
        totals = SavingsTotals.from_row(row, prefix="s_")
        label = router_label(row["classifier"], row["router_version"])
        st.caption(totals.line(label, row["counterfactual_model"] or "expensive model"))
        rows.append({"Router": label, "Requests": totals.requests, "Savings": totals.savings_ratio,
                     "Accuracy Δ vs expensive": totals.accuracy_delta, "Graded": totals.graded,
                     "Spend (USD)": totals.spend_micro_usd / q.MICRO,
                     "Escalation overhead (USD)": totals.overhead_micro_usd / q.MICRO})
    if len(rows) > 1:
        st.dataframe(pd.DataFrame(rows), hide_index=True,
                     column_config={"Savings": st.column_config.NumberColumn(format="percent"),
                                    "Accuracy Δ vs expensive": st.column_config.NumberColumn(format="percent"),
                                    "Spend (USD)": st.column_config.NumberColumn(format="%.4f"),
                                    "Escalation overhead (USD)": st.column_config.NumberColumn(format="%.4f")})


# ----------------------------------------------------------------------------- Model mix


def model_mix(dsn: str, filters: q.Filters) -> None:
    st.header("Model mix")
    mix = q.mix_daily(dsn, filters)
    if mix.empty:
        no_requests()
        return
    total = int(mix["requests"].sum())
    by_model = mix.groupby("model", as_index=False).agg(requests=("requests", "sum"), spend_usd=("spend_usd", "sum"))
    by_model["share"] = by_model["requests"] / total
    by_model = by_model.sort_values("requests", ascending=False)
    cols = st.columns(max(1, len(by_model)))
    for col, row in zip(cols, by_model.itertuples(index=False), strict=False):
        col.metric(f"Share {row.model}", percent(row.share), help=f"{row.requests:,} of {total:,} requests")
    left, right = st.columns(2)
    left.altair_chart(charts.share_over_time(mix, "model", f"Share by answering model, per {filters.bucket}",
                                            bucket=filters.bucket), width="stretch")
    right.altair_chart(
        charts.share_over_time(mix, "difficulty", f"Share by predicted difficulty, per {filters.bucket}",
                               sort=DIFFICULTY_ORDER, bucket=filters.bucket),
        width="stretch",
    )
    st.altair_chart(charts.mix_heatmap(mix, DIFFICULTY_ORDER), width="stretch")
    by_difficulty = mix.groupby("difficulty", as_index=False)["requests"].sum()
    by_difficulty["share"] = by_difficulty["requests"] / total
    left, right = st.columns(2)
    billed = q.billed_by_model(dsn, filters)
    by_model = by_model.drop(columns=["spend_usd"]).merge(
        billed.rename(columns={"calls": "calls", "billed_micro_usd": "billed"}), on="model", how="outer")
    by_model[["requests", "calls", "rejected", "billed"]] = by_model[["requests", "calls", "rejected",
                                                                      "billed"]].fillna(0)
    by_model["share"] = by_model["share"].fillna(0.0)
    by_model["billed_usd"] = by_model.pop("billed") / q.MICRO
    with left:
        st.subheader("By model")
        st.caption(f"Spend is attributed to every model billed, attempt by attempt (a rejected cheap answer is the "
                   f"cheap model's): {usd(by_model['billed_usd'].sum())} in all.")
        st.dataframe(by_model, hide_index=True,
                     column_config={"model": st.column_config.TextColumn("Model"),
                                    "requests": st.column_config.NumberColumn("Requests answered", format="%d"),
                                    "share": st.column_config.NumberColumn("Share answered", format="percent"),
                                    "calls": st.column_config.NumberColumn("Calls billed", format="%d"),
                                    "rejected": st.column_config.NumberColumn("Answers rejected", format="%d"),
                                    "billed_usd": st.column_config.NumberColumn("Spend billed (USD)",
                                                                                format="%.6f")})
    with right:
        st.subheader("By predicted difficulty")
        st.dataframe(by_difficulty, hide_index=True,
                     column_config={"share": st.column_config.NumberColumn("Share", format="percent")})
    with st.expander("Routed model vs answering model"):
        st.dataframe(q.routed_vs_final(dsn, filters), hide_index=True)


# ----------------------------------------------------------------------------- Latency


def latency(dsn: str, filters: q.Filters) -> None:
    st.header("Latency")
    per_model = q.latency_by_model(dsn, filters)
    if per_model.empty:
        no_requests()
        return
    end_to_end = q.end_to_end_latency(dsn, filters)
    cols = st.columns(3)
    cols[0].metric("End-to-end p50", milliseconds(end_to_end["p50_ms"]))
    cols[1].metric("End-to-end p95", milliseconds(end_to_end["p95_ms"]))
    cols[2].metric("End-to-end p99", milliseconds(end_to_end["p99_ms"]))
    if end_to_end.get("streamed"):
        cols = st.columns(3)
        cols[0].metric("Time to first token p50", milliseconds(end_to_end["ttft_p50_ms"]))
        cols[1].metric("Time to first token p95", milliseconds(end_to_end["ttft_p95_ms"]))
        cols[2].metric("Streamed requests", f"{int(end_to_end['streamed']):,}")
        st.caption("Time to first token: streamed requests, from the request's creation to its first token "
                   "published (live), or to its checked answer when it was held for the answer checks.")
    st.caption("Per model: calls that returned an answer (accepted or rejected by the answer checks); failed calls "
               "are counted under *errors*. End to end: every attempt of a request, as its caller waited.")
    st.altair_chart(charts.latency_percentiles(per_model), width="stretch")
    st.dataframe(per_model, hide_index=True,
                 column_config={c: st.column_config.NumberColumn(c, format="%.0f") for c in ("p50_ms", "p95_ms",
                                                                                            "p99_ms")})
    daily = q.latency_daily(dsn, filters)
    if not daily.empty:
        st.altair_chart(charts.latency_trend(daily, filters.bucket), width="stretch")


# ----------------------------------------------------------------------------- Quality vs cost


def quality(dsn: str, filters: q.Filters) -> None:
    st.header("Quality vs cost")
    daily = q.quality_daily(dsn, filters)
    if daily.empty:
        st.info(
            "No graded answers (`model_eval`) match these filters. Grades are written when the router replays "
            "recorded outcomes (the demo) or an evaluation is loaded; live traffic alone has no correctness labels.",
            icon="ℹ️",
        )
        return
    graded = int(daily["graded"].sum())
    pass_rate = float((daily["pass_rate"] * daily["graded"]).sum() / graded)
    cost = float(daily["cost_usd"].sum())
    cols = st.columns(4)
    cols[0].metric("Graded answers", f"{graded:,}")
    cols[1].metric("Pass rate", percent(pass_rate))
    cols[2].metric("Cost of graded answers", usd(cost))
    cols[3].metric("Cost per correct answer", usd(cost / (pass_rate * graded)) if pass_rate else "–")
    st.altair_chart(charts.pass_rate_and_cost(daily, filters.bucket), width="stretch")
    per_model = q.quality_by_model(dsn, filters)
    totals = per_model[per_model["is_model_total"]].drop(columns=["is_model_total", "difficulty"])
    left, right = st.columns(2)
    left.altair_chart(charts.pass_rate_by_model(totals), width="stretch")
    with right:
        st.subheader("Pass rate per model")
        st.dataframe(totals, hide_index=True,
                     column_config={"pass_rate": st.column_config.NumberColumn("Pass rate", format="percent")})
    with st.expander("Per model and predicted difficulty"):
        st.dataframe(per_model[~per_model["is_model_total"]].drop(columns=["is_model_total"]), hide_index=True,
                     column_config={"pass_rate": st.column_config.NumberColumn("Pass rate", format="percent")})
    with st.expander(f"Figures per {filters.bucket}"):
        st.dataframe(daily, hide_index=True,
                     column_config={"period": _period_column(filters),
                                    "pass_rate": st.column_config.NumberColumn("Pass rate", format="percent")})


# ----------------------------------------------------------------------------- Escalations and fallbacks


def escalations(dsn: str, filters: q.Filters) -> None:
    st.header("Escalations and fallbacks")
    daily = q.escalation_daily(dsn, filters)
    if daily.empty:
        no_requests()
        return
    requests = int(daily["requests"].sum())
    cols = st.columns(4)
    cols[0].metric("Escalated", percent(daily["escalated"].sum() / requests),
                   help="Requests whose first answer was rejected by an answer check and retried on a stronger model.")
    cols[1].metric("Fell back", percent(daily["fell_back"].sum() / requests),
                   help="Requests where a model call failed and another model was tried.")
    cols[2].metric("Failed", percent(daily["failed"].sum() / requests),
                   help="Requests that got no answer from any model.")
    hops = q.transitions(dsn, filters)
    cols[3].metric("Hops", f"{int(hops['hops'].sum()) if not hops.empty else 0:,}")
    spend = q.fallback_spend_daily(dsn, filters)
    fallback, calls, share = fallback_totals(spend)
    cols = st.columns(4)
    cols[0].metric("Fallback spend", usd(fallback / q.MICRO),
                   help="What the calls made because a model failed or its circuit breaker was open billed: each "
                        "call a fallback hop named (docs/dashboard.md#fallback-spend). Part of Spend.")
    cols[1].metric("Fallback share of spend", percent(share))
    cols[2].metric("Fallback calls", f"{calls:,}")
    cols[3].metric("Spend", usd(int(spend["spend_micro_usd"].sum()) / q.MICRO))
    st.altair_chart(charts.escalation_rates(daily, filters.bucket), width="stretch")
    if hops.empty:
        st.info("No request in this range was escalated or fell back.", icon="ℹ️")
        return
    st.altair_chart(charts.transition_matrix(hops), width="stretch")
    st.subheader("Why")
    st.dataframe(hops, hide_index=True,
                 column_config={"kind": st.column_config.TextColumn("Kind"),
                                "from_model": st.column_config.TextColumn("From"),
                                "to_model": st.column_config.TextColumn("To"),
                                "reason_kind": st.column_config.TextColumn("Reason"),
                                "hops": st.column_config.NumberColumn("Hops", format="%d"),
                                "example_reason": st.column_config.TextColumn("Example")})
    fallback_spend_section(dsn, filters, spend)


def fallback_spend_section(dsn: str, filters: q.Filters, spend: pd.DataFrame) -> None:
    """Fallback spend per bucket, per model called and per path."""
    paths = q.fallback_spend_by_path(dsn, filters)
    if paths.empty:
        return
    st.subheader("Fallback spend")
    st.caption("Calls made because the model before them failed (`error`, `timeout`) or its circuit breaker was open "
               "(`circuit_open`: skipped without a call), and what they billed. Calls after a rejected answer are "
               "escalations, not fallbacks.")
    st.altair_chart(charts.fallback_spend(spend, filters.bucket), width="stretch")
    total = int(paths["fallback_micro_usd"].sum())
    per_model = paths.groupby("model", as_index=False).agg(calls=("calls", "sum"),
                                                           fallback_micro_usd=("fallback_micro_usd", "sum"))
    per_model["fallback_usd"] = per_model["fallback_micro_usd"] / q.MICRO
    per_model["share"] = per_model["fallback_micro_usd"] / total if total else None
    left, right = st.columns(2)
    with left:
        st.markdown("**Per model called**")
        st.dataframe(per_model.drop(columns=["fallback_micro_usd"]).sort_values("fallback_usd", ascending=False),
                     hide_index=True,
                     column_config={"model": st.column_config.TextColumn("Model"),
                                    "calls": st.column_config.NumberColumn("Fallback calls", format="%d"),
                                    "fallback_usd": st.column_config.NumberColumn("Fallback spend (USD)",
                                                                                  format="%.6f"),
                                    "share": st.column_config.NumberColumn("Share of fallback spend",
                                                                           format="percent")})
    with right:
        st.markdown("**Per path**")
        st.dataframe(paths.drop(columns=["fallback_micro_usd"]), hide_index=True,
                     column_config={"from_model": st.column_config.TextColumn("From"),
                                    "reason_kind": st.column_config.TextColumn("Reason"),
                                    "model": st.column_config.TextColumn("Called"),
                                    "calls": st.column_config.NumberColumn("Calls", format="%d"),
                                    "fallback_usd": st.column_config.NumberColumn("Fallback spend (USD)",
                                                                                  format="%.6f")})
    with st.expander(f"Fallback spend per {filters.bucket}"):
        st.dataframe(spend[["period", "spend_usd", "fallback_usd", "fallback_share", "fallback_calls"]],
                     hide_index=True,
                     column_config={"period": _period_column(filters),
                                    "spend_usd": st.column_config.NumberColumn("Spend (USD)", format="%.6f"),
                                    "fallback_usd": st.column_config.NumberColumn("Fallback spend (USD)",
                                                                                  format="%.6f"),
                                    "fallback_share": st.column_config.NumberColumn("Share of spend",
                                                                                    format="percent"),
                                    "fallback_calls": st.column_config.NumberColumn("Fallback calls")})


# ----------------------------------------------------------------------------- Request explorer


def _label(row: Any) -> str:
    return f"{row.created_at:%Y-%m-%d %H:%M:%S} · {row.final_model or 'failed'} · {row.prompt[:70]}"


def explorer(dsn: str, filters: q.Filters) -> None:
    st.header("Request explorer")
    text = st.text_input("Search", key="explorer_search", placeholder="request id, or words in the prompt")
    found = q.search_requests(dsn, filters, text)
    if found.empty:
        st.info("No request matches." if text.strip() else "No requests match these filters.", icon="ℹ️")
        return
    st.caption(f"{len(found):,} newest matching requests" + (" (limit reached)" if len(found) == q.EXPLORER_LIMIT else ""))
    st.dataframe(found, hide_index=True, height=240,
                 column_config={"cost_usd": st.column_config.NumberColumn("cost (USD)", format="%.6f"),
                                "latency_ms": st.column_config.NumberColumn("latency (ms)", format="%.0f")})
    labels = {row.request_id: _label(row) for row in found.itertuples(index=False)}
    request_id = st.selectbox("Request", list(labels), format_func=labels.get, key="explorer_request")
    if request_id is None:
        return
    detail = q.request_detail(dsn, request_id)
    if detail is None:
        st.warning(f"Request {request_id} is no longer in the database.")
        return
    show_request(detail)


def show_request(detail: dict[str, Any]) -> None:
    request = detail["request"]
    st.subheader(f"Request `{request['request_id']}`")
    cols = st.columns([1, 2, 2, 1])
    cols[0].metric("Predicted difficulty", request["difficulty"], help=f"confidence {request['confidence']:.2f}")
    cols[1].metric("Routed to", request["routed_model"])
    cols[2].metric("Answered by", request["final_model"] or "nobody (failed)")
    cols[3].metric("Status", request["status"])
    cols = st.columns([1, 2, 2, 1])
    cols[0].metric("Cost", usd(request["cost_usd"]))
    cols[1].metric(f"Always {request['counterfactual_model'] or 'expensive'}", usd(request["counterfactual_cost_usd"]))
    cols[2].metric("Tokens in / out", f"{request['tokens_in']:,} / {request['tokens_out']:,}")
    cols[3].metric("Latency", milliseconds(request["latency_ms"]))
    st.markdown("**Decision**")
    st.write(f"{request['decision_reason']}  \npolicy `{request['policy']}`, classifier `{request['classifier']}`, "
             f"tenant `{request['tenant']}`, customer tier `{request['customer_tier']}`, created "
             f"{request['created_at']:%Y-%m-%d %H:%M:%S} UTC")
    probabilities = request["probabilities"]
    if isinstance(probabilities, str):
        probabilities = json.loads(probabilities)
    if probabilities:
        st.dataframe(pd.DataFrame([probabilities]), hide_index=True)
    st.markdown("**Attempts**")
    if not detail["attempts"].empty:
        st.altair_chart(charts.attempt_timeline(detail["attempts"]), width="stretch")
    st.dataframe(detail["attempts"], hide_index=True,
                 column_config={"cost_usd": st.column_config.NumberColumn("cost (USD)", format="%.6f"),
                                "latency_ms": st.column_config.NumberColumn("latency (ms)", format="%.0f")})
    grading = detail["grading"]
    if request.get("recorded") is False:
        st.markdown("**Unrecorded prompt:** the outcomes data has no answer to it, so the stub model answered; "
                    "ungraded, left out of accuracy.")
    if grading:
        st.markdown(f"**Graded:** {'correct' if grading['correct'] else 'incorrect'} "
                    f"({grading['source'] or 'unknown source'} {grading['item_id'] or ''})")
    if request["error"]:
        st.error(f"Error: {request['error']}")
    left, right = st.columns(2)
    with left:
        st.markdown("**Prompt**")
        st.text(_preview(request["prompt"]))
    with right:
        st.markdown("**Response**")
        st.text(_preview(request["response"]) if request["response"] else "(no response)")


def _preview(text: str) -> str:
    return text if len(text) <= RESPONSE_PREVIEW_CHARS else text[:RESPONSE_PREVIEW_CHARS] + f" … (+{len(text) - RESPONSE_PREVIEW_CHARS:,} chars)"


# ----------------------------------------------------------------------------- Offline evaluation


def offline(reports_dir: Path) -> None:
    st.header("Offline evaluation")
    st.caption("The offline harness (`python -m training.evaluate --json OUT.json --plot OUT.png`) replays the "
               "router over recorded outcomes. Upload its report, or pick one found under "
               f"`{reports_dir}`.")
    uploaded = st.file_uploader("Harness report (JSON)", type=["json"], key="offline_upload")
    report: OfflineReport | None = None
    plot: bytes | Path | None = None
    try:
        if uploaded is not None:
            report = parse_report(json.loads(uploaded.getvalue()))
        else:
            found = find_reports(reports_dir)
            default = str(found[0]) if found else ""
            path_text = st.text_input("Report path", value=default, key="offline_path")
            if path_text.strip():
                path = report_path_in(reports_dir, path_text)
                report = load_report(path)
                sibling = path.with_suffix(".png")
                plot = sibling if sibling.exists() else None
    except (ReportError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        st.error(f"Cannot show this report: {exc}")
        return
    if report is None:
        st.info("No harness report yet: run the offline harness, then upload its JSON or give its path.", icon="ℹ️")
        return
    plot_upload = st.file_uploader("Harness plot (PNG, optional)", type=["png"], key="offline_plot")
    if plot_upload is not None:
        plot = plot_upload.getvalue()
    show_report(report, plot)


def show_report(report: OfflineReport, plot: bytes | Path | None) -> None:
    router = report.points[report.points["kind"] == "router"].iloc[0]
    cols = st.columns(4)
    cols[0].metric("Prompts", f"{report.n:,}" if report.n is not None else "–")
    cols[1].metric("Router accuracy", percent(router["accuracy"]))
    cols[2].metric("Router cost", usd(router["cost_usd"]))
    if report.savings is not None:
        savings = report.savings
        cols[3].metric("Savings vs expensive", format_savings(savings.savings_ratio),
                       delta=f"accuracy {format_delta(savings.accuracy_delta)}, {savings.graded:,} graded",
                       delta_color="off")
        expensive = report.points[report.points["kind"] == "single model"]["name"].tolist()
        st.caption(savings.line(report.router_name or "router",
                                expensive[-1].removeprefix("always ") if expensive else "expensive model"))
    else:
        cols[3].metric("Savings vs expensive", percent(report.savings_vs_expensive))
    overlap = report.extra.get("training_overlap")
    if isinstance(overlap, dict) and overlap.get("records"):
        st.warning(f"In-sample figures: {overlap['records']:,} of {overlap.get('of', '?'):,} records "
                   f"({100 * overlap.get('share', 0):.1f}%) are in the artifact's training data.", icon="⚠️")
    st.altair_chart(charts.offline_frontier(report.points, report.sweep), width="stretch")
    st.dataframe(report.points, hide_index=True,
                 column_config={"accuracy": st.column_config.NumberColumn("Accuracy", format="percent"),
                                "cost_usd": st.column_config.NumberColumn("Cost (USD)", format="%.4f")})
    if report.mix:
        st.subheader("Router's model mix")
        st.dataframe(pd.DataFrame({"model": list(report.mix), "share": list(report.mix.values())}), hide_index=True)
    if report.per_source is not None:
        st.subheader("Per source")
        st.dataframe(report.per_source, hide_index=True)
    if report.confidence:
        st.subheader("Bootstrap confidence interval")
        st.json(report.confidence)
    if report.sweep is not None:
        with st.expander("Threshold sweep"):
            st.dataframe(report.sweep, hide_index=True)
    if plot is not None:
        st.image(plot if isinstance(plot, bytes) else str(plot), caption="Harness plot")


def budgets(dsn: str) -> None:
    """Spend against budget this period, per tenant and per active key, with soft and hard budgets flagged."""
    st.header("Spend vs budget")
    st.caption("This UTC day or month, per the budget's period. Held: the worst-case cost of requests in flight, "
               "settled to the real cost when they complete. Budgets and keys: `python -m ingest.keys`.")
    frame = q.budget_report(dsn)
    if frame.empty:
        st.info("No tenants or keys yet: create one with `python -m ingest.keys create --tenant NAME`.", icon="ℹ️")
        return
    committed = frame["spent_micro_usd"] + frame["reserved_micro_usd"]

    def flag(row_committed: float, soft: float | None, hard: float | None) -> str:
        if hard is not None and not pd.isna(hard) and row_committed >= hard:
            return "over hard budget"
        if soft is not None and not pd.isna(soft) and row_committed > soft:
            return "over soft budget"
        return ""

    shown = pd.DataFrame({
        "scope": frame["scope"], "id": frame["scope_id"], "tenant": frame["tenant"], "name": frame["name"],
        "period": frame["budget_period"], "since": frame["period_start"], "requests": frame["requests"],
        "spent_usd": frame["spent_micro_usd"] / 1e6, "held_usd": frame["reserved_micro_usd"] / 1e6,
        "soft_usd": frame["soft_micro_usd"] / 1e6, "hard_usd": frame["hard_micro_usd"] / 1e6,
        "of_hard": committed / frame["hard_micro_usd"],
        "flag": [flag(c, s, h) for c, s, h in zip(committed, frame["soft_micro_usd"], frame["hard_micro_usd"],
                                                 strict=True)],
    })
    flagged = shown[shown["flag"] != ""]
    cols = st.columns(3)
    cols[0].metric("Tenants", int((shown["scope"] == "tenant").sum()))
    cols[1].metric("Keys", int((shown["scope"] == "key").sum()))
    cols[2].metric("Over a budget", len(flagged))
    if not flagged.empty:
        st.warning("Over budget: " + ", ".join(f"{r.scope} {r.id} ({r.flag})" for r in flagged.itertuples()))
    st.dataframe(shown, hide_index=True, width="stretch",
                 column_config={"spent_usd": st.column_config.NumberColumn("spent", format="$%.4f"),
                                "held_usd": st.column_config.NumberColumn("held", format="$%.4f"),
                                "soft_usd": st.column_config.NumberColumn("soft budget", format="$%.4f"),
                                "hard_usd": st.column_config.NumberColumn("hard budget", format="$%.4f"),
                                "of_hard": st.column_config.ProgressColumn("of hard budget", min_value=0,
                                                                           max_value=1, format="percent")})
