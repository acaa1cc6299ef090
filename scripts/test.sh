#!/usr/bin/env bash
# The test command: sets up .venv (scripts/setup.sh), then runs the fast test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
exec .venv/bin/python -m pytest -q "$@"
