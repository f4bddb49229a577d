#!/usr/bin/env bash
# Run the demo on a fresh machine: makes .venv, installs the project with the local-stack and dashboard
# extras, then starts the whole local stack (Tansu broker, Postgres, models, Faust worker, API, dashboard),
# streams demo prompts through it and keeps it running until Ctrl-C. The models replay real recorded
# answers when the outcomes data is found (ROUTER_DATA_DIR, else ../shared/data), else the local stub answers.
# Postgres: the server at PG_DSN when set, else an embedded one under .data/pg. Extra options go to
# `python -m stack` (see `./scripts/demo.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[stack,dashboard]'
# The outcomes data beside the checkout (as laid out for this project) makes the demo replay real answers.
if [ -z "${ROUTER_DATA_DIR:-}" ] && [ -d ../shared/data/outcomes ]; then
    export ROUTER_DATA_DIR="$(cd ../shared/data && pwd)"
fi
exec .venv/bin/python -m stack "$@"
