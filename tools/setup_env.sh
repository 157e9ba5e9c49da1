#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment at $VENV (default .venv) and install the
# package with its CPU dependencies. Idempotent: a second run only checks. Used by the README's
# two quick-start commands and by CI.
#   bash tools/setup_env.sh            # then: source .venv/bin/activate
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.megatron-vlm-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt setup.py ]; then
  echo "[setup] environment $VENV is up to date"
  exit 0
fi
echo "[setup] creating $VENV with $($PY --version)"
"$PY" -m venv "$VENV"
# the venv, with bytecode cached under it: the import check below then compiles torch and
# megatron-core once for every later process (tools/activate.sh)
# shellcheck source=tools/activate.sh
source tools/activate.sh
export PIP_DISABLE_PIP_VERSION_CHECK=1
# --no-compile: byte-compiling all of torch/transformers costs minutes of CPU; Python compiles what it
# imports and caches it (tools/activate.sh makes sure it may).
# torch first and pinned. torch 2.14.1 + torchvision 0.29.1 lie on this machine's local disk (a CUDA
# build that runs on CPU too). torchvision is needed because transformers' AutoProcessor for Qwen2.5-VL
# loads a video processor that imports it, and PyPI's torchvision does not import beside the CPU-only
# torch 2.13.0 build. An open torch range would pull several GB from the registry instead.
if ! python -c "import torch, torchvision" 2>/dev/null; then
  echo "[setup] installing torch 2.14.1 + torchvision 0.29.1 (a few minutes; ~6 GB)"
  python -m pip install -q --no-compile "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "is ignored" || true
fi
echo "[setup] installing megatron-vlm and its dependencies"
python -m pip install -q --no-compile -e ".[dev]" 2>&1 | grep -v "is ignored" || true
python -c "import megatron.core, megatron_vlm, pymupdf, torchvision" || { echo "[setup] install failed" >&2; exit 1; }
# OCR for scanned pages and broken text layers (pool stage): Tesseract and the language data its
# script detection picks (megatron_vlm/data/ocr.py). Installed when missing, also when tesseract
# itself is already there; optional: never fail for lack of it.
OCR_PACKAGES="tesseract-ocr tesseract-ocr-osd tesseract-ocr-eng tesseract-ocr-chi-sim tesseract-ocr-chi-tra tesseract-ocr-jpn \
tesseract-ocr-kor tesseract-ocr-deu tesseract-ocr-fra tesseract-ocr-spa tesseract-ocr-ita tesseract-ocr-por tesseract-ocr-rus"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; then
  missing=""
  for p in $OCR_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    echo "[setup] installing OCR packages:$missing"
    # shellcheck disable=SC2086
    (apt-get install -y -qq $missing >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $missing >/dev/null 2>&1)) \
      || echo "[setup] could not install$missing; scanned pages in those scripts will be OCRed poorly or not at all"
  fi
fi
touch "$stamp"
echo "[setup] done: source $VENV/bin/activate"
