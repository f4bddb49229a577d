"""Create, change and end online experiments (A/B arms) in Postgres; running workers pick changes up within
``ROUTER_EXPERIMENTS_REFRESH_S`` seconds (default 5), without a restart.

    python -m training.experiments create EXP --arm control:control:0.1:gpt-4o-2024-05-13 --arm router:router:0.1 \\
        [--arm candidate:artifact:0.1:artifacts/candidate] [--tenant T] [--unit user|conversation|request] [--salt S]
    python -m training.experiments update EXP --share control=0.2 --share router=0.2   # or --arm ... to replace arms
    python -m training.experiments end EXP
    python -m training.experiments list | show EXP

An arm is ``NAME:KIND:SHARE[:MODEL_OR_ARTIFACT]``: KIND ``control`` names a configured model, ``router`` is the
default router, ``artifact`` names a candidate artifact folder. Shares add up to at most 1; the rest of the
traffic is routed as usual and recorded without an arm. A user keeps its arm while the shares stay the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import psycopg
from pydantic import ValidationError

from core.registry import ModelRegistry
from core.settings import get_settings
from routing.artifact import ArtifactError, read_policy_doc
from routing.experiments import Arm, Experiment
from sql import repository


def parse_arm(text: str) -> Arm:
    parts = text.split(":", 3)
    if len(parts) < 3:
        raise ValueError(f"--arm {text!r}: expected NAME:KIND:SHARE[:MODEL_OR_ARTIFACT]")
    name, kind, share = parts[:3]
    target = parts[3] if len(parts) == 4 else None
    try:
        share_value = float(share)
    except ValueError:
        raise ValueError(f"--arm {text!r}: share {share!r} is not a number") from None
    fields: dict[str, Any] = {"name": name, "kind": kind, "share": share_value}
    if kind == "control":
        fields["model"] = target
    elif kind == "artifact":
        fields["artifact"] = target
    elif target is not None:
        raise ValueError(f"--arm {text!r}: a {kind} arm takes no model or artifact")
    try:
        return Arm.model_validate(fields)
    except ValidationError as exc:
        raise ValueError(f"--arm {text!r}: {exc.errors()[0]['msg']}") from None


def check_usable(experiment: Experiment, models_config: Path | None) -> None:
    """Refuse arms the workers could not run: an unknown control model, a folder that is no artifact."""
    if models_config is not None and Path(models_config).is_file():
        experiment.validate_for(ModelRegistry.from_yaml(models_config))
    for arm in experiment.arms:
        if arm.kind == "artifact":
            try:
                read_policy_doc(Path(arm.artifact or ""))
            except ArtifactError as exc:
                raise ValueError(f"arm {arm.name!r}: {exc}") from None


def with_shares(arms: list[Arm], shares: list[str]) -> list[Arm]:
    by_name = {arm.name: arm for arm in arms}
    for item in shares:
        name, _, value = item.partition("=")
        if name not in by_name:
            raise ValueError(f"--share {item!r}: no arm {name!r}; arms: {sorted(by_name)}")
        try:
            by_name[name] = by_name[name].model_copy(update={"share": float(value)})
        except ValueError:
            raise ValueError(f"--share {item!r}: expected NAME=SHARE") from None
    return [Arm.model_validate(by_name[arm.name].model_dump()) for arm in arms]


def describe(row: dict[str, Any]) -> str:
    arms = ", ".join(f"{a['name']} ({a['kind']}{' ' + (a.get('model') or a.get('artifact')) if a.get('model') or a.get('artifact') else ''}) "
                     f"{100 * a['share']:.1f}%" for a in row["arms"])
    state = f"ended {row['ended_at']:%Y-%m-%d %H:%M}" if row["ended_at"] else "running"
    return (f"{row['experiment_id']}: {state}; tenant {row['tenant'] or '(all)'}; unit {row['unit']}; "
            f"salt {row['salt']!r}; arms: {arms}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="Postgres DSN (default: ROUTER_PG_DSN / PG_DSN)")
    parser.add_argument("--models-config", type=Path, help="model registry to check control models against "
                                                           "(default: ROUTER_MODELS_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="start an experiment")
    create.add_argument("experiment_id")
    create.add_argument("--arm", action="append", required=True, help="NAME:KIND:SHARE[:MODEL_OR_ARTIFACT]")
    create.add_argument("--tenant", help="only this tenant's traffic (default: every tenant without its own)")
    create.add_argument("--unit", choices=("user", "conversation", "request"), default="user",
                        help="what keeps its arm: a user, a conversation, or nothing (each request)")
    create.add_argument("--salt", help="hash salt (default: the experiment id): a new salt reshuffles users")
    create.add_argument("--description")
    update = commands.add_parser("update", help="change a running experiment's shares or arms")
    update.add_argument("experiment_id")
    update.add_argument("--arm", action="append", default=[], help="replace all arms with these")
    update.add_argument("--share", action="append", default=[], help="NAME=SHARE: change one arm's share")
    update.add_argument("--description")
    end = commands.add_parser("end", help="end an experiment: its traffic goes back to the default router")
    end.add_argument("experiment_id")
    commands.add_parser("list", help="every experiment")
    show = commands.add_parser("show", help="one experiment as JSON")
    show.add_argument("experiment_id")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = get_settings()
    dsn = args.dsn or settings.pg_dsn
    if not dsn:
        parser.error("no database: pass --dsn or set ROUTER_PG_DSN / PG_DSN")
    models_config = args.models_config or settings.models_config
    with psycopg.connect(dsn) as conn:
        if args.command == "create":
            experiment = Experiment(experiment_id=args.experiment_id, tenant=args.tenant,
                                    salt=args.salt or args.experiment_id, unit=args.unit,
                                    arms=[parse_arm(a) for a in args.arm], description=args.description)
            check_usable(experiment, models_config)
            try:
                repository.insert_experiment(conn, {**experiment.model_dump(include={
                    "experiment_id", "tenant", "salt", "unit", "description"}),
                    "arms": [arm.model_dump(exclude_none=True) for arm in experiment.arms]})
            except psycopg.errors.UniqueViolation:
                raise ValueError(f"experiment {args.experiment_id!r} exists, or tenant "
                                 f"{args.tenant or '(all)'} already has a running experiment") from None
            print(f"created {describe(repository.get_experiment(conn, args.experiment_id))}")
        elif args.command == "update":
            row = repository.get_experiment(conn, args.experiment_id)
            if row is None or row["ended_at"] is not None:
                raise ValueError(f"no running experiment {args.experiment_id!r}")
            if not args.arm and not args.share:
                parser.error("update needs --arm or --share")
            arms = [parse_arm(a) for a in args.arm] or [Arm.model_validate(a) for a in row["arms"]]
            arms = with_shares(arms, args.share)
            experiment = Experiment.model_validate({**row, "arms": [a.model_dump() for a in arms]})
            check_usable(experiment, models_config)
            repository.update_experiment_arms(conn, args.experiment_id,
                                              [arm.model_dump(exclude_none=True) for arm in experiment.arms],
                                              args.description)
            print(f"updated {describe(repository.get_experiment(conn, args.experiment_id))}")
        elif args.command == "end":
            if not repository.end_experiment(conn, args.experiment_id):
                raise ValueError(f"no running experiment {args.experiment_id!r}")
            print(f"ended {describe(repository.get_experiment(conn, args.experiment_id))}")
        elif args.command == "list":
            for row in repository.list_experiments(conn):
                print(describe(row))
        else:
            row = repository.get_experiment(conn, args.experiment_id)
            if row is None:
                raise ValueError(f"no experiment {args.experiment_id!r}")
            print(json.dumps(row, indent=2, default=str))
    return 0


def cli(argv: list[str] | None = None) -> int:
    try:
        return main(argv)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    sys.exit(cli())
