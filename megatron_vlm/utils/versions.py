"""The software stack the GPU path is built for, and a check of the one installed.

    python -m megatron_vlm.utils.versions [--require-te]

prints the versions that matter (Python, torch and its CUDA, megatron-core, Transformer Engine,
flash-attn, apex, DALI, transformers, the GPU) and exits 1 with one line per version outside
``SUPPORTED`` (``--require-te``: TE missing is one of them). The Dockerfile runs it at build time,
benchmarks/gpu_check.sh at its start. Nothing here imports an optional package at module import.

The ranges: megatron-core 0.16.x is what the trainer is tested with (0.17 needs Python 3.12 and is
untested); Transformer Engine 2.9 - 2.11 is megatron-core 0.16's own supported range (its ``dev``
extra asks ``transformer-engine>=2.9,<2.12``). setup.py pins megatron-core to the same range
(tests/unit/test_versions.py keeps the two in step).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import re
import sys

SUPPORTED = {
    "megatron-core": ((0, 16, 1), (0, 17)),
    "transformer-engine": ((2, 9), (2, 12)),
}
"""Distribution -> (lowest supported, first unsupported) release."""

DISTRIBUTIONS = {
    "megatron-core": ("megatron-core",),
    "transformer-engine": ("transformer-engine", "transformer_engine", "transformer-engine-torch"),
    "flash-attn": ("flash-attn", "flash_attn"),
    "apex": ("apex",),
    "nvidia-dali": ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali"),
    "transformers": ("transformers",),
}


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: '2.9.0+70f53666' -> (2, 9, 0), '2.10.0a0+nv25.11' -> (2, 10, 0)."""
    match = re.match(r"\d+(\.\d+)*", version)
    if not match:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(x) for x in match.group(0).split("."))


def in_range(version: str, bounds: tuple[tuple[int, ...], tuple[int, ...]]) -> bool:
    """lowest <= release(version) < first unsupported (releases compared as padded tuples)."""
    low, high = bounds
    got = release(version)
    width = max(len(got), len(low), len(high))
    pad = lambda v: v + (0,) * (width - len(v))  # noqa: E731
    return pad(low) <= pad(got) < pad(high)


def installed(name: str) -> str | None:
    """The installed version of ``name`` (any of its distribution names), else None."""
    for dist in DISTRIBUTIONS.get(name, (name,)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def report() -> dict[str, str | None]:
    """Versions of the stack, and the GPU (None where absent)."""
    import torch

    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__,
                                  "cuda": torch.version.cuda}
    out.update({name: installed(name) for name in DISTRIBUTIONS})
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return out


def problems(versions: dict[str, str | None], require_te: bool = False) -> list[str]:
    """One line per version outside ``SUPPORTED`` (a missing megatron-core always, TE with ``require_te``)."""
    out = []
    for name, (low, high) in SUPPORTED.items():
        got = versions.get(name)
        wanted = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
        if got is None:
            if name == "megatron-core" or require_te:
                out.append(f"{name} is not installed (supported: {wanted})")
        elif not in_range(got, (low, high)):
            out.append(f"{name} {got} is outside the supported range {wanted}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--require-te", action="store_true", help="Transformer Engine missing is an error")
    args = parser.parse_args(argv)
    versions = report()
    print(" ".join(f"{k}={v or '-'}" for k, v in versions.items()), flush=True)
    found = problems(versions, args.require_te)
    for line in found:
        print(f"unsupported: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
