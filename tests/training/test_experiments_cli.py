"""python -m training.experiments: create, update shares, end; refuses what the workers could not run."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from training import experiments

MODELS = """
models:
  - {name: small, tier: cheap, prices: {input: 0.1, output: 0.4}}
  - {name: medium, tier: mid, prices: {input: 0.5, output: 0.8}}
  - {name: big, tier: expensive, prices: {input: 2.5, output: 10.0}}
"""


@pytest.fixture()
def cli(pg_dsn: str, tmp_path: Path):
    models = tmp_path / "models.yaml"
    models.write_text(MODELS)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM experiments")

    def run(*args: str) -> None:
        experiments.cli(["--dsn", pg_dsn, "--models-config", str(models), *args])

    return run


def arms(dsn: str, experiment_id: str) -> tuple[list[dict], bool]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT arms, ended_at IS NULL FROM experiments WHERE experiment_id = %s",
                           (experiment_id,)).fetchone()
    return row[0], row[1]


def test_create_update_end(cli, pg_dsn: str, capsys) -> None:
    cli("create", "exp-a", "--arm", "control:control:0.1:big", "--arm", "router:router:0.1")
    assert "created exp-a: running" in capsys.readouterr().out
    assert arms(pg_dsn, "exp-a") == ([{"name": "control", "kind": "control", "share": 0.1, "model": "big"},
                                      {"name": "router", "kind": "router", "share": 0.1}], True)
    cli("update", "exp-a", "--share", "router=0.3")
    assert [a["share"] for a in arms(pg_dsn, "exp-a")[0]] == [0.1, 0.3]
    with pytest.raises(SystemExit, match="already has a running experiment"):
        cli("create", "exp-b", "--arm", "router:router:0.1")
    cli("end", "exp-a")
    assert arms(pg_dsn, "exp-a")[1] is False
    with pytest.raises(SystemExit, match="no running experiment"):
        cli("update", "exp-a", "--share", "router=0.2")
    cli("create", "exp-b", "--arm", "router:router:0.1")  # the scope is free again
    cli("list")
    assert "exp-a: ended" in capsys.readouterr().out


@pytest.mark.parametrize(("arm", "message"), [
    ("control:control:0.1:nope", "names model 'nope'"),
    ("control:control:0.1", "names a model"),
    ("x:router:lots", "is not a number"),
    ("x:router", "NAME:KIND:SHARE"),
    ("c:artifact:0.1:/no/such/artifact", "not a classifier artifact"),
    ("r:router:1.5", "less than or equal to 1"),
])
def test_refuses_arms_the_workers_cannot_run(cli, pg_dsn: str, arm: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        cli("create", "exp-bad", "--arm", arm)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM experiments").fetchone()[0] == 0


def test_shares_over_one_are_refused(cli) -> None:
    with pytest.raises(SystemExit, match="more than 1"):
        cli("create", "exp-c", "--arm", "a:router:0.6", "--arm", "b:control:0.6:big")
