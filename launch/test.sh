#!/usr/bin/env bash
# Set up, check lint and format (ruff), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
# Lint and format first: a minute of tests is not spent on a tree that does not pass them.
.venv/bin/ruff check irllrec_dist tests
.venv/bin/ruff format --check irllrec_dist tests
exec .venv/bin/python -m pytest -q "$@"
