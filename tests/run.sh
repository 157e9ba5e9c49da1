#!/usr/bin/env bash
# Set up the environment (tools/setup_env.sh) and run the whole test suite on CPU.
#   bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
# shellcheck source=tools/activate.sh
source tools/activate.sh
ruff check .
# Two workers (pytest-xdist), one test handed out at a time, longest first (tests/conftest.py): many
# tests spend most of their time in one single-threaded subprocess, so two run side by side.
python -m pytest tests -q -n "${PYTEST_WORKERS:-2}" --dist load --maxschedchunk 1 "$@"
