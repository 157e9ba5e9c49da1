#!/usr/bin/env bash
# Set up the environment (tools/setup_env.sh) and run the whole test suite on CPU.
#   bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
# shellcheck disable=SC1091
source "${VENV:-.venv}/bin/activate"
ruff check .
python -m pytest tests -q "$@"
