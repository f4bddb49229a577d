"""The outcomes data format (see the data README): real prompts, each answered by several models.

Shared by training (labels, calibration, the offline harness) and the replay provider. The data is
never committed; its location comes from ``ROUTER_DATA_DIR`` or a command-line option.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ModelOutcome(BaseModel):
    model_config = ConfigDict(extra="ignore")

    correct: bool
    answer: str | None = None
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    response: str = ""


class OutcomeRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    source: str
    prompt: str = Field(min_length=1)
    category: str | None = None
    outcomes: dict[str, ModelOutcome]


class OutcomesFormatError(ValueError):
    """A line of an outcomes file that is not valid JSON or does not match the format."""


def outcome_files(paths: Iterable[Path | str]) -> list[Path]:
    """Expand files and folders (``*.jsonl`` / ``*.jsonl.gz``, also under ``outcomes/``) into a sorted file list."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.name.endswith((".jsonl", ".jsonl.gz")))
            if not found:
                raise FileNotFoundError(f"no .jsonl or .jsonl.gz outcomes files under {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"outcomes path does not exist: {path}")
    return files


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else path.open(encoding="utf-8")


def iter_outcomes(path: Path) -> Iterator[OutcomeRecord]:
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield OutcomeRecord.model_validate(json.loads(line))
            except (json.JSONDecodeError, ValidationError) as exc:
                raise OutcomesFormatError(f"{path}:{line_no}: not a valid outcomes record: {exc}") from exc


def load_outcomes(paths: Iterable[Path | str]) -> list[OutcomeRecord]:
    """Every record of every file, validated up front so a bad line fails before any work starts."""
    records: list[OutcomeRecord] = []
    for path in outcome_files(paths):
        records.extend(iter_outcomes(path))
    return records
