"""Reads the offline harness's report (``python -m training.evaluate --json OUT.json --plot OUT.png``).

Required: ``router`` with ``accuracy`` and ``cost_usd``. Everything else (``n``, ``baselines``,
``oracle``, ``router.savings_vs_expensive``, ``router.mix``, a per-source breakdown, a bootstrap
confidence interval, a threshold sweep) is shown when present and skipped when absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from core.savings import SavingsTotals


class ReportError(ValueError):
    """The file is not a harness report the dashboard can show."""


@dataclass
class OfflineReport:
    n: int | None
    points: pd.DataFrame  # name, kind (baseline / oracle / router), accuracy, cost_usd
    savings_vs_expensive: float | None
    mix: dict[str, float]
    per_source: pd.DataFrame | None
    confidence: dict[str, Any] | None
    sweep: pd.DataFrame | None
    extra: dict[str, Any] = field(default_factory=dict)
    # core/savings.py's sums (``router.savings``), and the router's name, when the report has them.
    savings: SavingsTotals | None = None
    router_name: str | None = None


def _point(name: str, kind: str, entry: Any) -> dict[str, Any] | None:
    if not isinstance(entry, dict):
        return None
    accuracy, cost = entry.get("accuracy"), entry.get("cost_usd", entry.get("cost"))
    if not isinstance(accuracy, int | float) or not isinstance(cost, int | float):
        return None
    return {"name": name, "kind": kind, "accuracy": float(accuracy), "cost_usd": float(cost)}


def _sweep(report: dict[str, Any]) -> pd.DataFrame | None:
    """A threshold sweep: a list of points (or a dict of columns) with accuracy and cost, under one of a few names."""
    for key in ("sweep", "threshold_sweep", "curve", "frontier", "pareto"):
        raw = report.get(key) or (report.get("router") or {}).get(key)
        if not raw:
            continue
        frame = pd.DataFrame(raw) if isinstance(raw, list) else pd.DataFrame.from_dict(raw)
        if "cost_usd" not in frame.columns and "cost" in frame.columns:
            frame = frame.rename(columns={"cost": "cost_usd"})
        if {"accuracy", "cost_usd"} <= set(frame.columns):
            for label in ("threshold", "label", "name", "setting"):
                if label in frame.columns:
                    frame["label"] = frame[label].astype(str)
                    break
            return frame.sort_values("cost_usd").reset_index(drop=True)
    return None


def _per_source(report: dict[str, Any]) -> pd.DataFrame | None:
    for key in ("per_source", "by_source", "sources"):
        raw = report.get(key)
        if isinstance(raw, dict) and raw:
            rows = []
            for source, entry in raw.items():
                flat = pd.json_normalize(entry, sep=".").iloc[0].to_dict() if isinstance(entry, dict) else {"value": entry}
                rows.append({"source": source, **flat})
            return pd.DataFrame(rows)
        if isinstance(raw, list) and raw:
            return pd.json_normalize(raw, sep=".")
    return None


def _confidence(report: dict[str, Any]) -> dict[str, Any] | None:
    for key in ("bootstrap", "bootstrap_ci", "ci", "confidence_interval"):
        raw = report.get(key) or (report.get("router") or {}).get(key)
        if raw:
            return raw if isinstance(raw, dict) else {"value": raw}
    return None


def parse_report(report: Any) -> OfflineReport:
    if not isinstance(report, dict):
        raise ReportError("a harness report is a JSON object")
    router = _point("router", "router", report.get("router"))
    if router is None:
        raise ReportError("the report has no 'router' entry with numeric 'accuracy' and 'cost_usd'")
    points = [router]
    for name, entry in (report.get("baselines") or {}).items():
        point = _point(f"always {name}", "single model", entry)
        if point:
            points.append(point)
    oracle = _point("oracle", "oracle", report.get("oracle"))
    if oracle:
        points.append(oracle)
    raw_router = report["router"]
    savings = raw_router.get("savings_vs_expensive")
    mix = raw_router.get("mix") if isinstance(raw_router.get("mix"), dict) else {}
    known = {"n", "router", "baselines", "oracle"}
    totals = None
    if isinstance(raw_router.get("savings"), dict):
        try:
            totals = SavingsTotals(**{k: int(v) for k, v in raw_router["savings"].items()
                                      if k in SavingsTotals.__dataclass_fields__})
        except (TypeError, ValueError):
            totals = None
    return OfflineReport(
        n=report.get("n") if isinstance(report.get("n"), int) else None,
        points=pd.DataFrame(points),
        savings_vs_expensive=float(savings) if isinstance(savings, int | float) else None,
        mix=mix,
        per_source=_per_source(report),
        confidence=_confidence(report),
        sweep=_sweep(report),
        extra={key: value for key, value in report.items() if key not in known},
        savings=totals,
        router_name=raw_router.get("name") if isinstance(raw_router.get("name"), str) else None,
    )


def load_report(path: Path) -> OfflineReport:
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ReportError(f"no report at {path}") from exc
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON: {exc}") from exc
    return parse_report(raw)


def report_path_in(root: Path, text: str) -> Path:
    """The report file named by ``text`` (absolute, or relative to ``root``), refused unless it lies inside the
    reports folder: the dashboard must not read arbitrary files of the server."""
    root = Path(root).resolve()
    path = Path(text.strip())
    path = (path if path.is_absolute() else root / path).resolve()
    if not path.is_relative_to(root):
        raise ReportError(f"only reports under {root} can be opened here; upload the file instead")
    if path.suffix.lower() != ".json":
        raise ReportError("a harness report is a .json file")
    return path


def find_reports(root: Path) -> list[Path]:
    """Harness reports under ``root`` (newest first): JSON files with a top-level ``router`` entry."""
    if not root.is_dir():
        return []
    found = []
    for path in root.rglob("*.json"):
        try:
            if path.stat().st_size < 5_000_000 and '"router"' in path.read_text(errors="ignore"):
                found.append(path)
        except OSError:
            continue
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
