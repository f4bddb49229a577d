#!/usr/bin/env bash
# Run the demo on a fresh machine: makes .venv, installs the project with the local-stack and dashboard
# extras, then starts the whole local stack (Tansu broker, Postgres, stub models, Faust worker, API,
# dashboard), pushes demo prompts through it and keeps it running until Ctrl-C.
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
exec .venv/bin/python -m stack "$@"
