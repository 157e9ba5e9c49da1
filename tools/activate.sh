# shellcheck shell=bash
# Sourced, not run: activate the project's virtual environment ($VENV, default .venv) for the
# README's two commands (examples/quickstart.sh, tests/run.sh), after tools/setup_env.sh made it.
#   source tools/activate.sh
# Python must be able to cache bytecode. Some images set PYTHONDONTWRITEBYTECODE; then every process
# compiles torch and megatron-core from source again: `import megatron.core` took 30 s of CPU instead
# of 11 s on the 2-core CI machine, and the suite and the quick start start hundreds of processes.
# The cache goes under the venv (PYTHONPYCACHEPREFIX), so nothing is written beside the sources.
# shellcheck disable=SC1091
source "${VENV:-.venv}/bin/activate"
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX="$VIRTUAL_ENV/pycache"
