"""Altair charts for the dashboard, built from the small aggregated frames of :mod:`dashboard.queries`."""

from __future__ import annotations

import altair as alt
import pandas as pd


def period_x(bucket: str, periods: pd.Series) -> alt.X:
    """The time axis of trend charts, ticked exactly at the buckets that hold data.

    Explicit tick values: Vega's own time ticks repeat a day's label at 12-hour ticks, and Streamlit's
    Vega build fails on interval tick counts. DateTime values (not epoch ms) stay in the data's frame of
    reference, naive UTC. Padding keeps the first and last bars inside the plot.
    """
    values = [alt.DateTime(year=t.year, month=t.month, date=t.day, hours=t.hour)
              for t in sorted(pd.to_datetime(periods).dropna().unique())]
    fmt, title = ("%H:%M", "Hour (UTC)") if bucket == "hour" else ("%b %d", "Day (UTC)")
    return alt.X("period:T", title=title, scale=alt.Scale(padding=24),
                 axis=alt.Axis(format=fmt, values=values, labelOverlap=True))


def period_tooltip(bucket: str) -> alt.Tooltip:
    return alt.Tooltip("period:T", title=bucket, format="%Y-%m-%d %H:%M" if bucket == "hour" else "%Y-%m-%d")


CHART_HEIGHT = 260


def spend_vs_counterfactual(daily: pd.DataFrame, counterfactual_model: str, bucket: str = "day") -> alt.Chart:
    """Daily spend next to what sending everything to the expensive model would have cost."""
    long = daily.melt(
        id_vars=["period"],
        value_vars=["spend_usd", "counterfactual_spend_usd"],
        var_name="series",
        value_name="usd",
    )
    long["series"] = long["series"].map(
        {"spend_usd": "Router spend", "counterfactual_spend_usd": f"Always {counterfactual_model}"}
    )
    return (
        alt.Chart(long, title=f"Spend per {bucket} vs the always-expensive counterfactual")
        .mark_line(point=True)
        .encode(
            x=period_x(bucket, long["period"]),
            y=alt.Y("usd:Q", title="USD"),
            color=alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom")),
            tooltip=[period_tooltip(bucket), "series:N", alt.Tooltip("usd:Q", format="$,.4f")],
        )
        .properties(height=CHART_HEIGHT)
    )


def savings_per_day(daily: pd.DataFrame, bucket: str = "day") -> alt.Chart:
    frame = daily.dropna(subset=["savings_ratio"])
    return (
        alt.Chart(frame, title=f"Savings vs counterfactual, per {bucket}")
        .mark_bar()
        .encode(
            x=period_x(bucket, frame["period"]),
            y=alt.Y("savings_ratio:Q", title="Savings", axis=alt.Axis(format="%")),
            tooltip=[period_tooltip(bucket), alt.Tooltip("savings_ratio:Q", format=".1%", title="savings")],
        )
        .properties(height=CHART_HEIGHT)
    )


def cost_per_request(daily: pd.DataFrame, bucket: str = "day") -> alt.Chart:
    base = alt.Chart(daily, title=f"Requests and average cost per request, per {bucket}").encode(
        x=period_x(bucket, daily["period"]))
    bars = base.mark_bar(opacity=0.35).encode(
        y=alt.Y("requests:Q", title="Requests"), tooltip=[period_tooltip(bucket), "requests:Q"]
    )
    line = base.mark_line(point=True, color="#d62728").encode(
        y=alt.Y("cost_per_request_usd:Q", title="USD per request"),
        tooltip=[period_tooltip(bucket), alt.Tooltip("cost_per_request_usd:Q", format="$,.6f")],
    )
    return alt.layer(bars, line).resolve_scale(y="independent").properties(height=CHART_HEIGHT)


def share_over_time(
    frame: pd.DataFrame, category: str, title: str, sort: list[str] | None = None, bucket: str = "day"
) -> alt.Chart:
    """Normalised stacked bars: each bucket's share of requests by ``category``."""
    daily = frame.groupby(["period", category], as_index=False)["requests"].sum()
    return (
        alt.Chart(daily, title=title)
        .mark_bar()
        .encode(
            x=period_x(bucket, daily["period"]),
            y=alt.Y("requests:Q", stack="normalize", title="Share of requests", axis=alt.Axis(format="%")),
            color=alt.Color(f"{category}:N", title=category.capitalize(), sort=sort),
            order=alt.Order(f"{category}:N"),
            tooltip=[period_tooltip(bucket), f"{category}:N", "requests:Q"],
        )
        .properties(height=CHART_HEIGHT)
    )


def mix_heatmap(frame: pd.DataFrame, difficulty_order: list[str]) -> alt.Chart:
    """Which model answered each predicted difficulty, over the whole range."""
    totals = frame.groupby(["difficulty", "model"], as_index=False)["requests"].sum()
    base = alt.Chart(totals, title="Answering model by predicted difficulty").encode(
        x=alt.X("model:N", title="Answering model", axis=alt.Axis(labelAngle=0, labelLimit=260)),
        y=alt.Y("difficulty:N", title="Predicted difficulty", sort=difficulty_order),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("requests:Q", title="Requests", scale=alt.Scale(scheme="blues")),
        tooltip=["difficulty:N", "model:N", "requests:Q"],
    )
    labels = base.mark_text(baseline="middle").encode(text="requests:Q")
    # A step, not a fixed height: Streamlit squashes discrete axes given a fixed height.
    return alt.layer(cells, labels).properties(height=alt.Step(48))


def latency_percentiles(latency: pd.DataFrame) -> alt.Chart:
    long = latency.melt(id_vars=["model"], value_vars=["p50_ms", "p95_ms", "p99_ms"], var_name="percentile",
                        value_name="ms").dropna()
    long["percentile"] = long["percentile"].str.removesuffix("_ms")
    return (
        alt.Chart(long, title="Latency per model (answered calls)")
        .mark_bar()
        .encode(
            x=alt.X("model:N", title="Model", axis=alt.Axis(labelAngle=0, labelLimit=260)),
            xOffset=alt.XOffset("percentile:N", sort=["p50", "p95", "p99"]),
            y=alt.Y("ms:Q", title="Milliseconds"),
            color=alt.Color("percentile:N", sort=["p50", "p95", "p99"], title="Percentile"),
            tooltip=["model:N", "percentile:N", alt.Tooltip("ms:Q", format=",.0f")],
        )
        .properties(height=CHART_HEIGHT)
    )


def latency_trend(daily: pd.DataFrame, bucket: str = "day") -> alt.Chart:
    long = daily.melt(id_vars=["period", "model"], value_vars=["p50_ms", "p95_ms"], var_name="percentile",
                      value_name="ms")
    long["percentile"] = long["percentile"].str.removesuffix("_ms")
    return (
        alt.Chart(long, title=f"p50 (solid) and p95 (dashed) per model, per {bucket}")
        .mark_line(point=True)
        .encode(
            x=period_x(bucket, long["period"]),
            y=alt.Y("ms:Q", title="Milliseconds"),
            color=alt.Color("model:N", title="Model"),
            strokeDash=alt.StrokeDash("percentile:N", sort=["p50", "p95"], title="Percentile"),
            tooltip=[period_tooltip(bucket), "model:N", "percentile:N", alt.Tooltip("ms:Q", format=",.0f")],
        )
        .properties(height=CHART_HEIGHT)
    )


def pass_rate_and_cost(daily: pd.DataFrame, bucket: str = "day") -> alt.Chart:
    """Pass rate (line, left axis) against cost of the graded answers (bars, right axis), per time bucket."""
    base = alt.Chart(daily, title=f"Pass rate and cost per {bucket} (graded answers)").encode(
        x=period_x(bucket, daily["period"]))
    bars = base.mark_bar(opacity=0.35, color="#ff7f0e").encode(
        y=alt.Y("cost_usd:Q", title="Cost of graded answers (USD)"),
        tooltip=[period_tooltip(bucket), alt.Tooltip("cost_usd:Q", format="$,.4f"), "graded:Q"],
    )
    line = base.mark_line(point=True, color="#1f77b4").encode(
        y=alt.Y("pass_rate:Q", title="Pass rate", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
        tooltip=[period_tooltip(bucket), alt.Tooltip("pass_rate:Q", format=".1%"), "graded:Q"],
    )
    return alt.layer(bars, line).resolve_scale(y="independent").properties(height=CHART_HEIGHT)


def pass_rate_by_model(per_model: pd.DataFrame) -> alt.Chart:
    """Pass rate against average cost, one point per model: up and to the left is better."""
    return (
        alt.Chart(per_model, title="Pass rate vs average cost, per model")
        .mark_circle(opacity=0.85)
        .encode(
            x=alt.X("cost_per_answer_usd:Q", title="Average cost per graded answer (USD)"),
            y=alt.Y("pass_rate:Q", title="Pass rate", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
            size=alt.Size("graded:Q", title="Graded answers"),
            color=alt.Color("model:N", title="Model"),
            tooltip=["model:N", alt.Tooltip("pass_rate:Q", format=".1%"),
                     alt.Tooltip("cost_per_answer_usd:Q", format="$,.6f"), "graded:Q"],
        )
        .properties(height=CHART_HEIGHT)
    )


def escalation_rates(daily: pd.DataFrame, bucket: str = "day") -> alt.Chart:
    long = daily.melt(id_vars=["period"], value_vars=["escalation_rate", "fallback_rate"], var_name="kind",
                      value_name="rate")
    long["kind"] = long["kind"].map({"escalation_rate": "escalated", "fallback_rate": "fell back"})
    return (
        alt.Chart(long, title=f"Share of requests escalated / fallen back, per {bucket}")
        .mark_line(point=True)
        .encode(
            x=period_x(bucket, long["period"]),
            y=alt.Y("rate:Q", title="Share of requests", axis=alt.Axis(format="%")),
            color=alt.Color("kind:N", title=None),
            tooltip=[period_tooltip(bucket), "kind:N", alt.Tooltip("rate:Q", format=".1%")],
        )
        .properties(height=CHART_HEIGHT)
    )


def fallback_spend(daily: pd.DataFrame, bucket: str = "day") -> alt.Chart:
    """Fallback spend per bucket (bars) and its share of all spend (line)."""
    base = alt.Chart(daily, title=f"Fallback spend and its share of spend, per {bucket}").encode(
        x=period_x(bucket, daily["period"]))
    bars = base.mark_bar(opacity=0.5).encode(
        y=alt.Y("fallback_usd:Q", title="Fallback spend (USD)"),
        tooltip=[period_tooltip(bucket), alt.Tooltip("fallback_usd:Q", format="$,.6f", title="fallback spend"),
                 alt.Tooltip("fallback_calls:Q", title="fallback calls")],
    )
    line = base.mark_line(point=True, color="#d62728").encode(
        y=alt.Y("fallback_share:Q", title="Share of spend", axis=alt.Axis(format="%")),
        tooltip=[period_tooltip(bucket), alt.Tooltip("fallback_share:Q", format=".1%", title="share of spend")],
    )
    return alt.layer(bars, line).resolve_scale(y="independent").properties(height=CHART_HEIGHT)


def transition_matrix(hops: pd.DataFrame) -> alt.Chart:
    """From which model to which, split by escalation (bad answer) and fallback (error)."""
    totals = hops.groupby(["kind", "from_model", "to_model"], as_index=False)["hops"].sum()
    totals["path"] = totals["from_model"] + " → " + totals["to_model"].fillna("?")
    return (
        alt.Chart(totals, title="Hops by path")
        .mark_bar()
        .encode(
            y=alt.Y("path:N", title=None, sort="-x", axis=alt.Axis(labelLimit=400)),
            x=alt.X("hops:Q", title="Hops"),
            color=alt.Color("kind:N", title=None),
            tooltip=["kind:N", "from_model:N", "to_model:N", "hops:Q"],
        )
        .properties(height=alt.Step(32))
    )


def offline_frontier(points: pd.DataFrame, sweep: pd.DataFrame | None) -> alt.Chart:
    """Cost–accuracy plane of the offline harness: single-model baselines, oracle, router, sweep curve."""
    layers = []
    if sweep is not None and not sweep.empty:
        tooltip = [alt.Tooltip("cost_usd:Q", format="$,.4f"), alt.Tooltip("accuracy:Q", format=".1%")]
        if "label" in sweep.columns:
            tooltip.insert(0, "label:N")
        layers.append(
            alt.Chart(sweep).mark_line(point=True, color="#888888", strokeDash=[4, 3]).encode(
                x="cost_usd:Q", y="accuracy:Q", order="cost_usd:Q", tooltip=tooltip)
        )
    base = alt.Chart(points).encode(
        x=alt.X("cost_usd:Q", title="Cost (USD)"),
        y=alt.Y("accuracy:Q", title="Accuracy", axis=alt.Axis(format="%")),
    )
    layers.append(
        base.mark_point(size=140, filled=True).encode(
            color=alt.Color("kind:N", title=None, legend=alt.Legend(orient="bottom")),
            shape=alt.Shape("kind:N", title=None),
            tooltip=["name:N", "kind:N", alt.Tooltip("accuracy:Q", format=".1%"),
                     alt.Tooltip("cost_usd:Q", format="$,.4f")],
        )
    )
    layers.append(base.mark_text(align="left", dx=9, dy=-7).encode(text="name:N"))
    return alt.layer(*layers, title="Offline evaluation: cost vs accuracy").properties(height=360)


def attempt_timeline(attempts: pd.DataFrame) -> alt.Chart:
    """One request's chain of calls on a time axis: where its latency went and which call failed."""
    frame = attempts.copy()
    first = frame["started_at"].min()
    frame["start_ms"] = (frame["started_at"] - first).dt.total_seconds() * 1000
    frame["end_ms"] = frame["start_ms"] + frame["latency_ms"]
    frame["call"] = frame["attempt_no"].astype(str) + ". " + frame["model"]
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            y=alt.Y("call:N", title=None, sort=frame["call"].tolist(), axis=alt.Axis(labelLimit=300)),
            x=alt.X("start_ms:Q", title="Milliseconds since the first call"),
            x2="end_ms:Q",
            color=alt.Color("status:N", title="Status",
                            scale=alt.Scale(domain=["ok", "rejected", "error"], range=["#2ca02c", "#ff7f0e", "#d62728"])),
            tooltip=["call:N", "status:N", alt.Tooltip("latency_ms:Q", format=",.0f"), "next_reason:N"],
        )
        .properties(height=alt.Step(32))
    )
