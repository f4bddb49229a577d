"""Every dashboard view, run with streamlit's AppTest against a real Postgres seeded with known rows."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.settings import get_settings
from tests.dashboard import seed as known

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
DB_VIEWS = ("overview", "mix", "latency", "quality", "escalations", "explorer")

RunView = Callable[..., AppTest]


def metrics(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


def deltas(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.delta for metric in at.metric}


def charts(at: AppTest) -> list:
    return at.get("vega_lite_chart")


def frame_with(at: AppTest, column: str):
    """The first dataframe shown that has ``column``."""
    for element in at.dataframe:
        if column in element.value.columns:
            return element.value
    raise AssertionError(f"no dataframe with column {column!r}: {[list(d.value.columns) for d in at.dataframe]}")


@pytest.fixture()
def run_view(clean_db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[RunView]:
    monkeypatch.setenv("ROUTER_PG_DSN", clean_db)
    monkeypatch.setenv("ROUTER_DASHBOARD_REPORTS_DIR", str(tmp_path / "reports"))
    get_settings.cache_clear()
    st.cache_data.clear()

    def run(view: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60)
        at.query_params["view"] = view
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    yield run
    get_settings.cache_clear()
    st.cache_data.clear()


@pytest.fixture()
def seeded(clean_db: str) -> str:
    known.seed(clean_db)
    return clean_db


def test_overview_shows_seeded_spend_and_savings(seeded: str, run_view: RunView) -> None:
    at = run_view("overview")
    shown = metrics(at)
    assert shown["Requests"] == "5"
    assert shown["Spend"] == "$0.0036"
    assert shown["Always expensive"] == "$0.007"
    assert shown["Savings"] == "48.6%"  # 1 - 3600/7000
    # Every savings figure comes with its accuracy delta vs always-expensive and the graded count.
    assert deltas(at)["Savings"] == "accuracy -25.0 pt, 4 graded"
    assert shown["Escalation overhead"] == "$0.00005"
    assert shown["Graded"] == "4"
    assert shown["Cost per request"] == "$0.00072"
    assert shown["Escalated"] == "20.0%"
    assert shown["Fell back"] == "40.0%"
    assert any(caption.value.startswith("Fallback spend: $0.0002 (5.6% of spend) on 2 calls")
               for caption in at.caption)
    assert len(charts(at)) >= 3
    daily = frame_with(at, "savings_ratio")
    assert daily["requests"].tolist() == [2, 3]
    assert daily["savings_ratio"].round(4).tolist() == [round(1 - 400 / 3000, 4), 0.2]
    assert daily["cost_per_request_usd"].round(6).tolist() == [0.0002, round(3200 / 3 / 1e6, 6)]


def test_filters_apply_in_sql(seeded: str, run_view: RunView) -> None:
    at = run_view("overview")
    at.multiselect(key="tenants").set_value(["globex"]).run()
    assert not at.exception
    shown = metrics(at)
    assert shown["Requests"] == "2"
    assert shown["Savings"] == "20.0%"  # 1 - 3200/4000
    at.multiselect(key="tenants").set_value([]).run()
    at.date_input(key="date_range").set_value((known.DAY1.date(), known.DAY1.date())).run()
    assert metrics(at)["Requests"] == "2"
    assert metrics(at)["Savings"] == "86.7%"
    at.date_input(key="date_range").set_value((known.DAY2.date(), known.DAY2.date())).run()
    at.multiselect(key="difficulties").set_value(["medium"]).run()
    assert metrics(at)["Requests"] == "1"  # r5 only
    at.multiselect(key="difficulties").set_value([]).run()
    at.multiselect(key="models").set_value([known.LLAMA]).run()
    assert metrics(at)["Requests"] == "1"  # r4 only (r5 failed: answered by nobody)


def test_model_mix_shares(seeded: str, run_view: RunView) -> None:
    at = run_view("mix")
    shown = metrics(at)
    assert shown[f"Share {known.LLAMA}"] == "40.0%"
    assert shown[f"Share {known.PHI}"] == "20.0%"
    assert shown[f"Share {known.GPT}"] == "20.0%"
    assert shown["Share (failed)"] == "20.0%"
    by_difficulty = frame_with(at, "difficulty").set_index("difficulty")["requests"].to_dict()
    assert by_difficulty == {"complex": 1, "medium": 2, "simple": 2}
    # Spend attributed to every model billed, attempt by attempt, summing to the Overview's spend.
    billed = frame_with(at, "billed_usd").set_index("model")["billed_usd"].round(6).to_dict()
    assert billed == {known.PHI: 0.00015, known.LLAMA: 0.00045, known.GPT: 0.003, "(failed)": 0.0}
    assert len(charts(at)) >= 3


def shown_ms(metric: str) -> float:
    """A latency metric as the dashboard shows it ("1,234 ms"), in ms (rounded to the ms on screen)."""
    assert metric.endswith(" ms"), metric
    return float(metric.removesuffix(" ms").replace(",", ""))


def test_latency_percentiles_per_model(seeded: str, run_view: RunView) -> None:
    at = run_view("latency")
    per_model = frame_with(at, "p95_ms").set_index("model")
    # Answered calls only: phi 100 and 200 ms (its error is counted, not timed), llama 400 and 300, gpt 1000.
    # Percentiles come from the latency histograms: within 0.99 % of percentile_cont over the calls.
    assert per_model.loc[known.PHI, ["p50_ms", "p95_ms", "p99_ms"]].tolist() == pytest.approx([150, 195, 199], rel=0.01)
    assert per_model.loc[known.LLAMA, ["p50_ms", "p95_ms"]].tolist() == pytest.approx([350, 395], rel=0.01)
    assert per_model.loc[known.GPT, "p99_ms"] == pytest.approx(1000, rel=0.01)
    assert per_model["errors"].to_dict() == {known.GPT: 1, known.LLAMA: 1, known.PHI: 1}
    assert per_model["calls"].to_dict() == {known.GPT: 1, known.LLAMA: 2, known.PHI: 2}
    # End to end: request latencies 100, 600, 1000, 350, 130.
    assert shown_ms(metrics(at)["End-to-end p50"]) == pytest.approx(350, rel=0.01, abs=1)
    assert len(charts(at)) >= 2


def test_quality_vs_cost(seeded: str, run_view: RunView) -> None:
    at = run_view("quality")
    shown = metrics(at)
    assert shown["Graded answers"] == "4"
    assert shown["Pass rate"] == "75.0%"
    assert shown["Cost of graded answers"] == "$0.0036"
    daily = frame_with(at, "cost_per_answer_usd")
    per_model = frame_with(at, "pass_rate").set_index("model")["pass_rate"].to_dict()
    assert per_model == {known.GPT: 1.0, known.LLAMA: 0.5, known.PHI: 1.0}
    assert len(charts(at)) >= 2
    daily = [d.value for d in at.dataframe if "period" in d.value.columns and "graded" in d.value.columns][0]
    assert daily["pass_rate"].tolist() == [0.5, 1.0]
    assert daily["cost_usd"].round(6).tolist() == [0.0004, 0.0032]


def test_quality_without_model_eval_shows_empty_state(clean_db: str, run_view: RunView) -> None:
    known.seed(clean_db, with_evals=False)
    at = run_view("quality")
    assert any("No graded answers" in info.value for info in at.info)
    assert not charts(at)


def test_escalations_and_fallbacks(seeded: str, run_view: RunView) -> None:
    at = run_view("escalations")
    shown = metrics(at)
    assert shown["Escalated"] == "20.0%"
    assert shown["Fell back"] == "40.0%"
    assert shown["Failed"] == "20.0%"
    assert shown["Hops"] == "3"
    hops = frame_with(at, "to_model")
    rows = {(r.kind, r.from_model, r.to_model, r.reason_kind, r.hops) for r in hops.itertuples()}
    assert rows == {
        ("escalation", known.PHI, known.LLAMA, "short", 1),
        ("fallback", known.PHI, known.LLAMA, "error", 1),
        ("fallback", known.LLAMA, known.GPT, "timeout", 1),
    }
    assert len(charts(at)) >= 2
    assert not hops.isna().any().any()  # no `nan` cells
    # Fallback spend: the calls the fallback hops named, r4's llama call (200) and r5's gpt call (0).
    assert shown["Fallback spend"] == "$0.0002"
    assert shown["Fallback share of spend"] == "5.6%"  # 200 / 3600
    assert shown["Fallback calls"] == "2"
    assert shown["Spend"] == "$0.0036"
    per_model = frame_with(at, "share").set_index("model")
    assert per_model["calls"].to_dict() == {known.LLAMA: 1, known.GPT: 1}
    assert per_model["fallback_usd"].round(6).to_dict() == {known.LLAMA: 0.0002, known.GPT: 0.0}
    assert per_model["share"].to_dict() == {known.LLAMA: 1.0, known.GPT: 0.0}
    by_path = next(d.value for d in at.dataframe if {"from_model", "fallback_usd"} <= set(d.value.columns))
    paths = {(r.from_model, r.reason_kind, r.model, r.calls) for r in by_path.itertuples()}
    assert paths == {(known.PHI, "error", known.LLAMA, 1), (known.LLAMA, "timeout", known.GPT, 1)}
    per_day = frame_with(at, "fallback_share")
    assert per_day["fallback_usd"].round(6).tolist() == [0.0, 0.0002]
    assert per_day["fallback_share"].round(4).tolist() == [0.0, 0.0625]  # day 2: 200 / 3200
    assert len(charts(at)) >= 3  # with the fallback spend chart


def test_why_groups_escalations_by_reason_kind(seeded: str, run_view: RunView) -> None:
    # Two verifier escalations whose reason texts differ (they carry their scores): one row, not two.
    with psycopg.connect(seeded) as conn:
        for number, p_right in ((2, 0.31), (3, 0.27)):
            conn.execute(
                "INSERT INTO request_attempts (request_id, attempt_no, model, tier, status, started_at, latency_ms,"
                " tokens_in, tokens_out, cost_micro_usd, next_model, next_reason_kind, next_reason)"
                " VALUES ('r1', %s, %s, 'cheap', 'rejected', %s, 10, 1, 1, 0, %s, 'verifier', %s)",
                (number, known.PHI, known.DAY1, known.LLAMA,
                 f"escalate to {known.LLAMA}: verifier: p(right)={p_right:.2f}, "
                 f"p({known.LLAMA} right)=0.80, gain 0.5 >= 0.10 for its cost"))
    hops = frame_with(run_view("escalations"), "reason_kind")
    verifier = hops[hops["reason_kind"] == "verifier"]
    assert len(verifier) == 1 and int(verifier["hops"].iloc[0]) == 2


def test_request_explorer_search_and_detail(seeded: str, run_view: RunView) -> None:
    at = run_view("explorer")
    assert len(frame_with(at, "request_id")) == 5
    at.text_input(key="explorer_search").set_value("aardvark").run()
    assert not at.exception
    found = frame_with(at, "request_id")
    assert found["request_id"].tolist() == ["r2"]
    shown = metrics(at)
    assert shown["Routed to"] == known.PHI
    assert shown["Answered by"] == known.LLAMA
    assert shown["Cost"] == "$0.0003"
    assert shown[f"Always {known.GPT}"] == "$0.002"
    attempts = frame_with(at, "attempt_no")
    assert attempts["model"].tolist() == [known.PHI, known.LLAMA]
    assert attempts["status"].tolist() == ["rejected", "ok"]
    assert attempts["next_reason"].tolist()[0] == f"escalate to {known.LLAMA}: too_short"
    assert any(text.value == "The aardvark answer." for text in at.text)
    assert any("correct" in md.value and "incorrect" in md.value for md in at.markdown)
    # Search by id; then a search that matches nothing.
    at.text_input(key="explorer_search").set_value("r5").run()
    assert metrics(at)["Answered by"] == "nobody (failed)"
    assert any("timeout" in error.value for error in at.error)
    at.text_input(key="explorer_search").set_value("100%_no_such").run()
    assert any("No request matches" in info.value for info in at.info)


@pytest.mark.parametrize("view", DB_VIEWS)
def test_empty_database_shows_empty_state(clean_db: str, run_view: RunView, view: str) -> None:
    at = run_view(view)
    assert any("holds no requests yet" in info.value for info in at.info)
    assert not charts(at)


def test_filters_matching_nothing_show_empty_state(seeded: str, run_view: RunView) -> None:
    for view in DB_VIEWS:
        at = run_view(view)
        at.multiselect(key="models").set_value([known.GPT]).run()
        at.multiselect(key="difficulties").set_value(["simple"]).run()
        assert not at.exception, view
        assert at.info, view


def test_missing_dsn_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTER_PG_DSN", raising=False)
    monkeypatch.delenv("PG_DSN", raising=False)
    monkeypatch.chdir(Path(APP).parent)  # keep a developer's .env out of it
    get_settings.cache_clear()
    try:
        at = AppTest.from_file(APP, default_timeout=30)
        at.run()
        assert not at.exception
        assert "ROUTER_PG_DSN" in at.error[0].value
    finally:
        get_settings.cache_clear()


HARNESS_REPORT = {
    "n": 1200,
    "baselines": {
        known.PHI: {"accuracy": 0.61, "cost_usd": 0.21},
        known.LLAMA: {"accuracy": 0.74, "cost_usd": 0.95},
        known.GPT: {"accuracy": 0.81, "cost_usd": 9.80},
    },
    "oracle": {"accuracy": 0.90, "cost_usd": 0.80},
    "router": {"accuracy": 0.79, "cost_usd": 2.45, "savings_vs_expensive": 0.75,
               "mix": {known.PHI: 0.5, known.LLAMA: 0.3, known.GPT: 0.2}},
    "per_source": {"gsm8k": {"n": 600, "router": {"accuracy": 0.85, "cost_usd": 1.0}},
                   "mmlu-pro": {"n": 600, "router": {"accuracy": 0.73, "cost_usd": 1.45}}},
    "bootstrap": {"accuracy_ci95": [0.77, 0.81]},
    "sweep": [{"threshold": 0.3, "accuracy": 0.70, "cost_usd": 1.1}, {"threshold": 0.6, "accuracy": 0.79,
                                                                        "cost_usd": 2.45}],
}


def test_offline_evaluation_from_reports_dir(tmp_path: Path, run_view: RunView) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "eval.json").write_text(json.dumps(HARNESS_REPORT))
    at = run_view("offline")
    shown = metrics(at)
    assert shown["Prompts"] == "1,200"
    assert shown["Router accuracy"] == "79.0%"
    assert shown["Router cost"] == "$2.45"
    assert shown["Savings vs expensive"] == "75.0%"
    points = frame_with(at, "kind").set_index("name")
    assert points.loc["oracle", "accuracy"] == 0.90
    assert points.loc[f"always {known.GPT}", "cost_usd"] == 9.80
    assert set(frame_with(at, "source")["source"]) == {"gsm8k", "mmlu-pro"}
    assert frame_with(at, "threshold")["threshold"].tolist() == [0.3, 0.6]
    assert len(charts(at)) == 1


def test_offline_evaluation_minimal_and_bad_reports(tmp_path: Path, run_view: RunView) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    minimal = reports / "minimal.json"
    minimal.write_text(json.dumps({"router": {"accuracy": 0.5, "cost_usd": 1.0}}))
    at = run_view("offline")
    assert metrics(at)["Router accuracy"] == "50.0%"
    assert metrics(at)["Prompts"] == "–"
    assert len(charts(at)) == 1
    bad = reports / "bad.json"
    bad.write_text(json.dumps({"router": {"accuracy": "high"}}))
    at.text_input(key="offline_path").set_value(str(bad)).run()
    assert not at.exception
    assert "no 'router' entry" in at.error[0].value
    at.text_input(key="offline_path").set_value(str(reports / "missing.json")).run()
    assert "no report at" in at.error[0].value


def test_offline_evaluation_without_report(run_view: RunView) -> None:
    at = run_view("offline")
    assert any("No harness report yet" in info.value for info in at.info)


def test_one_day_range_buckets_by_hour(seeded: str, run_view: RunView) -> None:
    at = run_view("overview")
    assert frame_with(at, "savings_ratio")["period"].dt.hour.tolist() == [0, 0]  # two days, daily buckets
    at.date_input(key="date_range").set_value((known.DAY2.date(), known.DAY2.date())).run()
    hourly = frame_with(at, "savings_ratio")
    assert hourly["period"].dt.hour.tolist() == [15, 16, 17]  # r3, r4, r5 in three hours of day 2
    assert hourly["requests"].tolist() == [1, 1, 1]
    assert hourly["savings_ratio"].round(4).tolist()[:2] == [0.0, 0.8]
    assert hourly["savings_ratio"].isna().tolist()[2]  # r5 failed: no counterfactual


def test_date_range_from_the_url(seeded: str, run_view: RunView) -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"view": "overview", "from": "2026-01-06", "to": "2026-01-06"})
    at.run()
    assert not at.exception
    assert metrics(at)["Requests"] == "3"
    assert at.date_input(key="date_range").value == (known.DAY2.date(), known.DAY2.date())
    # Out-of-range or malformed dates fall back to the data's range.
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"view": "overview", "from": "not-a-date"})
    at.run()
    assert metrics(at)["Requests"] == "5"


def test_unreachable_database_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from stack.services import free_port

    monkeypatch.setenv("ROUTER_PG_DSN", f"host=127.0.0.1 port={free_port()} user=nobody connect_timeout=1")
    get_settings.cache_clear()
    try:
        at = AppTest.from_file(APP, default_timeout=60)
        at.query_params["view"] = "overview"
        at.run()
        assert not at.exception
        assert "Cannot reach the router's database" in at.error[0].value
    finally:
        get_settings.cache_clear()


def test_latency_shows_time_to_first_token_of_streamed_requests(seeded: str, run_view: RunView) -> None:
    import psycopg

    at = run_view("latency")
    assert "Time to first token p50" not in metrics(at)  # nothing streamed yet
    with psycopg.connect(seeded, autocommit=True) as conn:
        ids = [row[0] for row in conn.execute("SELECT request_id FROM requests ORDER BY request_id LIMIT 3")]
        for request_id, ttft in zip(ids, (40.0, 80.0, 120.0), strict=True):
            conn.execute("UPDATE requests SET ttft_ms = %s WHERE request_id = %s", (ttft, request_id))
    st.cache_data.clear()
    shown = metrics(run_view("latency"))
    assert shown_ms(shown["Time to first token p50"]) == pytest.approx(80, rel=0.01, abs=1)
    assert shown["Streamed requests"] == "3"


def test_offline_evaluation_refuses_a_path_outside_the_reports_folder(tmp_path: Path, run_view: RunView) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "eval.json").write_text(json.dumps(HARNESS_REPORT))
    outside = tmp_path / "secret.json"
    outside.write_text(json.dumps(HARNESS_REPORT))
    at = run_view("offline")
    for path in (str(outside), "../secret.json", "/etc/passwd", str(reports / ".." / "secret.json")):
        at.text_input(key="offline_path").set_value(path).run()
        assert not at.exception
        assert "only reports under" in at.error[0].value or "is a .json file" in at.error[0].value, path
        assert not at.metric
    at.text_input(key="offline_path").set_value("eval.json").run()  # relative to the folder: allowed
    assert metrics(at)["Router accuracy"] == "79.0%"


def test_budgets_view_shows_spend_against_budget(clean_db: str, run_view: RunView) -> None:
    import asyncio

    from psycopg import AsyncConnection

    from sql.keys import ApiKey, TenantPolicy, admit_request, create_key, update_tenant

    async def seed() -> None:
        async with await AsyncConnection.connect(clean_db, autocommit=True) as conn:
            await conn.execute("TRUNCATE tenants, api_keys, budget_usage, request_ledger CASCADE")
            policy: TenantPolicy = await update_tenant(conn, "acme", budget_hard_micro_usd=1_000_000,
                                                       budget_soft_micro_usd=500_000)
            _, key = await create_key(conn, "", "acme", name="ci", budget_hard_micro_usd=2_000_000)
            assert isinstance(key, ApiKey)
            await admit_request(conn, request_id="r1", key=key, tenant=policy, hold_micro_usd=600_000)

    asyncio.run(seed())
    at = run_view("budgets")
    shown = frame_with(at, "of_hard").set_index("scope")
    assert shown.loc["tenant", "held_usd"] == 0.6 and shown.loc["tenant", "flag"] == "over soft budget"
    assert shown.loc["key", "hard_usd"] == 2.0 and shown.loc["key", "flag"] == ""
    assert metrics(at)["Over a budget"] == "1"


def test_oidc_mode_shows_only_sign_in(seeded: str, run_view: RunView, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_DASHBOARD_AUTH", "oidc")
    get_settings.cache_clear()
    at = run_view("overview")
    assert [button.label for button in at.button] == ["Sign in"]
    assert not at.metric and not at.dataframe and not at.sidebar.radio

def test_simulated_timestamps_are_labelled(seeded: str, run_view: RunView) -> None:
    assert not any("Simulated timestamps" in w.value for w in run_view("overview").warning)
    with psycopg.connect(seeded) as conn:
        conn.execute("UPDATE requests SET metadata = '{\"simulated_time\": \"true\"}' WHERE request_id IN ('r1', 'r2')")
    st.cache_data.clear()
    for view in ("overview", "latency"):
        assert any("Simulated timestamps: 2 requests" in w.value for w in run_view(view).warning)
