"""benchmarks.ladder_stats: the outcome figures docs/classifier.md quotes, from the outcomes files."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_outcomes import LADDER_ARG

from benchmarks import ladder_stats


def test_prints_every_figure_per_group(synthetic_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ladder_stats.main(["--data", str(synthetic_dir), "--ladder", LADDER_ARG,
                              "--prices", str(synthetic_dir / "prices.json")]) == 0
    out = capsys.readouterr().out
    blocks = {b.split("]")[0]: b for b in out.split("\n[")[1:]}
    assert set(blocks) == {"all", "source=alpha", "source=beta"}
    values = {line.split()[0]: float(line.split()[1]) for line in blocks["all"].strip().splitlines()[1:]}
    assert values["n"] == 120 and values["share_of_all_expensive_spend"] == 1.0
    for key in ("perfect_verifier_cascade_savings", "perfect_verifier_from_mid_savings", "cheap_mid_agree_share",
                "expensive_spend_on_wrong_answers"):
        assert 0.0 <= values[key] <= 1.0, key
    sizes = {name: int(block.split("\n")[1].split()[1]) for name, block in blocks.items()}
    assert sizes == {"all": 120, "source=alpha": 70, "source=beta": 50}


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="prices file not found"):
        ladder_stats.cli(["--data", str(tmp_path), "--ladder", "a,b,c", "--prices", str(tmp_path / "none.json")])
