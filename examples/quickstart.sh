#!/usr/bin/env bash
# The README's main command, on a CPU machine in under 10 minutes (2 cores): make a handful of PDFs,
# pool -> synth (template teacher) -> build shards, train the debug Qwen2.5-VL for a few dozen
# steps on 2 ranks at TP=2, export the checkpoint to HF, and ask the export one question with
# transformers. Everything goes under runs/quickstart/ (removed first).
#   bash examples/quickstart.sh
# The recipe (all hyperparameters) is examples/recipes/debug.yaml; the tokenizer is read from
# ../shared/reference/qwen2_5_vl_tokenizer beside the checkout (data.tokenizer in the recipe).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
# shellcheck source=tools/activate.sh
source tools/activate.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONWARNINGS=ignore OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
RUN=runs/quickstart
RECIPE=examples/recipes/debug.yaml
rm -rf "$RUN"
mkdir -p "$RUN"
step() { echo; echo "=== [quickstart] $* ($(date +%T))"; }

step "1/6 sample PDFs -> $RUN/pdfs"
python -m megatron_vlm.data.sample_pdfs "$RUN/pdfs" --docs 6 --pages 8 10 --seed 0

step "2/6 pool (28 DPI: ~90 tokens a page keeps the debug sequences short) -> $RUN/pool"
python tools/preprocess_data.py pool --input "$RUN/pdfs" --output "$RUN/pool" --dpi 28 --no-ocr

step "3/6 synth with the template teacher -> $RUN/qa"
python tools/preprocess_data.py synth --pool "$RUN/pool" --output "$RUN/qa" --teacher template

step "4/6 build shards -> $RUN/shards"
python tools/preprocess_data.py build --pool "$RUN/pool" --qa "$RUN/qa" --recipe "$RECIPE" --output "$RUN/shards"

step "5/6 train the debug model on 2 CPU ranks (TP=2) -> $RUN/checkpoints"
torchrun --nproc-per-node 2 --master-port "${MASTER_PORT:-29517}" -m megatron_vlm.train --config "$RECIPE" "$@"

step "6/6 export to HF -> $RUN/hf, then ask it one question with transformers"
python tools/convert_checkpoint.py mcore-to-hf --mcore "$RUN/checkpoints" --output "$RUN/hf"
python examples/ask_hf.py --hf "$RUN/hf" --shards "$RUN/shards" --tokenizer ../shared/reference/qwen2_5_vl_tokenizer
echo "[quickstart] done: shards $RUN/shards, checkpoints $RUN/checkpoints, HF export $RUN/hf"
