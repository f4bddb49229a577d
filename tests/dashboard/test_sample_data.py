"""The benchmark's synthetic traffic fills the savings columns (migration 0006) consistently with its rows."""

from __future__ import annotations

import psycopg

from dashboard.sample_data import generate


def test_sample_data_fills_the_savings_columns(clean_db: str) -> None:
    with psycopg.connect(clean_db) as conn:
        generate(conn, requests=400, days=3, progress=False)
        graded, evals, mismatched, overhead, billed_not_returned = conn.execute(
            "SELECT count(*) FILTER (WHERE r.correct IS NOT NULL AND r.counterfactual_correct IS NOT NULL),"
            " (SELECT count(*) FROM model_eval),"
            " count(*) FILTER (WHERE e.correct IS DISTINCT FROM r.correct AND e.request_id IS NOT NULL),"
            " sum(r.overhead_micro_usd),"
            " (SELECT sum(cost_micro_usd) FROM request_attempts WHERE status <> 'ok')"
            " FROM requests r LEFT JOIN model_eval e USING (request_id)").fetchone()
    assert graded == evals > 0
    assert mismatched == 0  # requests.correct is the graded answer's model_eval.correct
    assert overhead == billed_not_returned > 0  # rejected answers before an escalation, billed
