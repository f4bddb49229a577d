"""One fixed set of replayed requests, with escalations, through the whole pipeline (Tansu, Faust worker,
Postgres): the console, every dashboard view that shows spend or savings (Streamlit AppTest) and
``training.evaluate`` on the same records report the same spend, baseline, overhead and savings to the
micro-USD, and the spend billed per model sums to the total."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.savings import SavingsTotals, format_delta, format_savings
from core.settings import get_settings
from dashboard.views import usd
from sql.repository import savings_totals_columns
from stack.services import create_database, drop_database, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
APP = str(REPO_ROOT / "dashboard" / "app.py")
LADDER = ("phi-3.5-mini-instruct", "llama-3-70b-instruct", "gpt-4o-2024-05-13")
# config/models.demo.yaml's list prices, USD per 1M tokens
PRICES = {"phi-3.5-mini-instruct": {"input": 0.13, "output": 0.52},
          "llama-3-70b-instruct": {"input": 0.59, "output": 0.79},
          "gpt-4o-2024-05-13": {"input": 2.5, "output": 10.0}}
N = 16
REFUSAL = "I'm sorry, but I can't help with that."


def write_outcomes(folder: Path) -> Path:
    """N records; the cheap model refuses every fourth prompt (escalated: its refusal is billed and is overhead),
    and the models' grades differ so the accuracy delta is not zero."""
    (folder / "outcomes").mkdir(parents=True)
    path = folder / "outcomes" / "gsm8k.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        for i in range(N):
            outcomes = {}
            for k, model in enumerate(LADDER):
                refused = k == 0 and i % 4 == 0
                outcomes[model] = {
                    "correct": False if refused else (k == 2 or (i + k) % 3 != 0),
                    "answer": str(2 * i), "input_tokens": 30 + 7 * i + k, "output_tokens": 12 if refused else 45 + 13 * k + i,
                    "response": REFUSAL if refused else f"Adding {i} and {i} step by step gives {2 * i}. "
                                                        f"The answer is {2 * i}."}
            record = {"id": f"gsm8k/{i}", "source": "gsm8k", "prompt": f"Question {i}: what is {i} + {i}?",
                      "outcomes": outcomes}
            handle.write(json.dumps(record) + "\n")
    return path


def usd6(text: str) -> int:
    return round(float(text) * 1e6)


@pytest.mark.timeout(420)
def test_console_dashboard_and_evaluate_agree_to_the_micro_usd(pg_admin_dsn: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes = write_outcomes(tmp_path / "data")
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(PRICES))
    db_name = f"router_agree_{uuid.uuid4().hex[:8]}"
    dsn = create_database(pg_admin_dsn, db_name)
    env = {**os.environ, "PG_DSN": dsn, "ROUTER_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
           "ROUTER_API_PORT": str(free_port()), "COLUMNS": "400", "PYTHONUNBUFFERED": "1"}
    for name in ("ROUTER_PG_DSN", "ROUTER_STUB_URL", "ROUTER_MODELS_CONFIG", "ROUTER_CLASSIFIER_ARTIFACT"):
        env.pop(name, None)
    try:
        # 1. The pipeline and its console.
        result = subprocess.run(
            [sys.executable, "-m", "stack", "--replay", "--sample", str(N), "--data-dir", str(tmp_path / "data"),
             "--exit-after-demo", "--no-dashboard", "--data-root", str(tmp_path / "stack")],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        console = result.stdout + result.stderr
        assert result.returncode == 0, console
        with psycopg.connect(dsn, row_factory=psycopg.rows.dict_row) as conn:
            stored = SavingsTotals.from_row(conn.execute(f"SELECT {savings_totals_columns()} FROM requests r").fetchone())
            billed = {row["model"]: int(row["billed"]) for row in conn.execute(
                "SELECT model, sum(cost_micro_usd) AS billed FROM request_attempts GROUP BY model")}
            escalated = conn.execute("SELECT count(*) AS n FROM requests WHERE escalated").fetchone()["n"]
        assert stored.requests == N and stored.graded == N
        assert escalated >= N // 4 and stored.overhead_micro_usd > 0  # the refusals were billed, then escalated
        assert sum(billed.values()) == stored.spend_micro_usd  # per-model spend sums to the total
        assert stored.accuracy_delta != 0

        spend = re.search(r"router:\s+spend (\d+\.\d{6}) USD, accuracy [\d.]+% \((\d+)/(\d+)\).*escalation overhead "
                          r"(\d+\.\d{6}) USD", console)
        baseline = re.search(r"always gpt-4o-2024-05-13: spend (\d+\.\d{6}) USD, accuracy [\d.]+% \((\d+)/(\d+)\)",
                             console)
        assert spend and baseline, console
        assert usd6(spend.group(1)) == stored.spend_micro_usd
        assert usd6(spend.group(4)) == stored.overhead_micro_usd
        assert (int(spend.group(2)), int(spend.group(3))) == (stored.correct, stored.graded)
        assert usd6(baseline.group(1)) == stored.baseline_micro_usd
        assert int(baseline.group(2)) == stored.baseline_correct
        assert stored.line("seed heuristic (untrained)", LADDER[2]) in console
        for model, micro in billed.items():
            assert re.search(rf"{re.escape(model)}[\s│┃|]+\d+[\s│┃|]+{micro / 1e6:.6f}", console), (model, console)

        # 2. training.evaluate on the same records, routed by the same (seed heuristic) router.
        report_path = tmp_path / "report.json"
        evaluated = subprocess.run(
            [sys.executable, "-m", "training.evaluate", "--data", str(outcomes), "--ladder", ",".join(LADDER),
             "--prices", str(prices), "--json", str(report_path), "--bootstrap", "50"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
        report = json.loads(report_path.read_text())
        offline = SavingsTotals(**{k: v for k, v in report["router"]["savings"].items()
                                   if k in SavingsTotals.__dataclass_fields__})
        assert offline == stored
        assert round(report["router"]["cost_usd"] * 1e6) == stored.spend_micro_usd
        assert round(report["baselines"][LADDER[2]]["cost_usd"] * 1e6) == stored.baseline_micro_usd
        assert report["router"]["savings_vs_expensive"] == pytest.approx(stored.savings_ratio, abs=1e-12)
        assert stored.line("seed heuristic (untrained)", LADDER[2]) in evaluated.stdout

        # 3. Every dashboard view that shows spend or savings, on the same rows.
        monkeypatch.setenv("ROUTER_PG_DSN", dsn)
        monkeypatch.setenv("ROUTER_DASHBOARD_REPORTS_DIR", str(tmp_path))
        get_settings.cache_clear()
        st.cache_data.clear()

        def run(view: str) -> AppTest:
            at = AppTest.from_file(APP, default_timeout=60)
            at.query_params["view"] = view
            at.run()
            assert not at.exception, [e.value for e in at.exception]
            return at

        overview = run("overview")
        tiles = {m.label: m for m in overview.metric}
        assert tiles["Spend"].value == usd(stored.spend_micro_usd / 1e6)
        assert tiles["Always expensive"].value == usd(stored.baseline_micro_usd / 1e6)
        assert tiles["Savings"].value == format_savings(stored.savings_ratio)
        assert tiles["Savings"].delta == f"accuracy {format_delta(stored.accuracy_delta)}, {stored.graded:,} graded"
        assert tiles["Escalation overhead"].value == usd(stored.overhead_micro_usd / 1e6)
        per_bucket = next(d.value for d in overview.dataframe if "spend_usd" in d.value.columns)
        assert round(per_bucket["spend_usd"].sum() * 1e6) == stored.spend_micro_usd
        assert round(per_bucket["counterfactual_spend_usd"].sum() * 1e6) == stored.baseline_micro_usd
        assert any(stored.line("seed heuristic (untrained)", LADDER[2]) in c.value for c in overview.caption)

        mix = run("mix")
        by_model = next(d.value for d in mix.dataframe if "billed_usd" in d.value.columns)
        shown = {row.model: round(row.billed_usd * 1e6) for row in by_model.itertuples() if row.billed_usd}
        assert shown == billed
        assert sum(shown.values()) == stored.spend_micro_usd

        offline_view = run("offline")
        offline_tiles = {m.label: m for m in offline_view.metric}
        assert offline_tiles["Savings vs expensive"].value == format_savings(stored.savings_ratio)
        assert offline_tiles["Savings vs expensive"].delta == (
            f"accuracy {format_delta(stored.accuracy_delta)}, {stored.graded:,} graded")
        assert offline_tiles["Router cost"].value == usd(stored.spend_micro_usd / 1e6)
    finally:
        get_settings.cache_clear()
        st.cache_data.clear()
        drop_database(pg_admin_dsn, db_name)
