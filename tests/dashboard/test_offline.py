"""The offline-evaluation reader takes the harness's report in the shapes it may come in, and refuses junk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dashboard.offline import ReportError, find_reports, load_report, parse_report


def test_full_report() -> None:
    report = parse_report({
        "n": 10,
        "baselines": {"cheap": {"accuracy": 0.5, "cost_usd": 1}, "broken": {"accuracy": None}},
        "oracle": {"accuracy": 0.9, "cost_usd": 2.0},
        "router": {"accuracy": 0.7, "cost_usd": 3.0, "savings_vs_expensive": 0.4, "mix": {"cheap": 1.0},
                   "bootstrap_ci": {"accuracy": [0.6, 0.8]}},
        "by_source": [{"source": "gsm8k", "accuracy": 0.7}],
        "threshold_sweep": {"threshold": [0.2, 0.1], "accuracy": [0.6, 0.65], "cost": [2.0, 1.0]},
    })
    assert report.n == 10
    assert report.points.set_index("name")["kind"].to_dict() == {"router": "router", "always cheap": "single model",
                                                                  "oracle": "oracle"}
    assert report.savings_vs_expensive == 0.4
    assert report.mix == {"cheap": 1.0}
    assert report.confidence == {"accuracy": [0.6, 0.8]}
    assert report.per_source["source"].tolist() == ["gsm8k"]
    # A dict of columns, "cost" for "cost_usd", sorted by cost, labelled by threshold.
    assert report.sweep["cost_usd"].tolist() == [1.0, 2.0]
    assert report.sweep["label"].tolist() == ["0.1", "0.2"]


def test_minimal_report_has_no_optional_parts() -> None:
    report = parse_report({"router": {"accuracy": 1, "cost_usd": 0}})
    assert report.n is None and report.sweep is None and report.per_source is None and report.confidence is None
    assert len(report.points) == 1


@pytest.mark.parametrize("raw", [[], {"router": {"accuracy": 0.5}}, {"router": {"accuracy": "x", "cost_usd": 1}},
                                 {"baselines": {}}])
def test_junk_is_refused(raw: object) -> None:
    with pytest.raises(ReportError):
        parse_report(raw)


def test_load_and_find(tmp_path: Path) -> None:
    (tmp_path / "nested").mkdir()
    good = tmp_path / "nested" / "eval.json"
    good.write_text(json.dumps({"router": {"accuracy": 0.5, "cost_usd": 1.0}}))
    (tmp_path / "other.json").write_text(json.dumps({"something": "else"}))
    (tmp_path / "bad.json").write_text("{not json")
    assert find_reports(tmp_path) == [good]
    assert find_reports(tmp_path / "missing") == []
    assert load_report(good).points.iloc[0]["accuracy"] == 0.5
    with pytest.raises(ReportError, match="not valid JSON"):
        load_report(tmp_path / "bad.json")
    with pytest.raises(ReportError, match="no report at"):
        load_report(tmp_path / "missing.json")
