#!/usr/bin/env bash
# Set up the environment (tools/setup_env.sh) and run the whole test suite on CPU.
#   bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
# shellcheck source=tools/activate.sh
source tools/activate.sh
ruff check .
# Two workers (pytest-xdist), longest first (tests/conftest.py): many tests spend most of their time
# in one single-threaded subprocess, so two run side by side. Tests are handed out one at a time,
# except that those sharing a module-scoped fixture go to one worker together (loadgroup, in the
# order collected: --no-loadscope-reorder).
python -m pytest tests -q -n "${PYTEST_WORKERS:-2}" --dist loadgroup --no-loadscope-reorder "$@"
