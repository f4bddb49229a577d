"""Fixtures for the training tests: synthetic outcomes files the tests write themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic_outcomes import PRICES, make_records, write_jsonl_gz


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synthetic-outcomes")
    write_jsonl_gz(folder / "alpha.jsonl.gz", make_records(70, "alpha", seed=1))
    write_jsonl_gz(folder / "beta.jsonl.gz", make_records(50, "beta", seed=2))
    (folder / "prices.json").write_text(json.dumps(PRICES))
    return folder
