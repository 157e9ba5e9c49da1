"""The one device object: initialize() chooses it (CPU/gloo on request even beside CUDA), the rest
of the package reads it, and the CPU shims are switched off again by destroy()."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from megatron_vlm.parallel.state import Device, choose_device
from tests.dist_utils import run_distributed


def _cpu_beside_cuda() -> dict:
    import torch.distributed as dist

    from megatron_vlm.parallel import ParallelLayout, cpu_compat, destroy, device, initialize

    original = torch.cuda.current_device
    with mock.patch.object(torch.cuda, "is_available", return_value=True):
        chosen = initialize(ParallelLayout(), device="cpu")
        seen = {
            "chosen": chosen, "device": device(), "backend": dist.get_backend(), "shims_on": cpu_compat.enabled(),
            "cuda_tensor_on": torch.zeros(2, device="cuda").device.type,
        }
        with cpu_compat.cuda_type_names():
            seen["type_name"] = torch.zeros(1).type()
        destroy()
    seen["shims_after"] = cpu_compat.enabled()
    seen["current_device_restored"] = torch.cuda.current_device is original
    with cpu_compat.cuda_type_names():
        seen["type_name_after"] = torch.zeros(1).type()
    try:
        torch.zeros(1, device="cuda")
        seen["cuda_tensor_after"] = "made"
    except (RuntimeError, AssertionError):
        seen["cuda_tensor_after"] = "refused"
    return seen


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks that the shims come off on a machine without CUDA")
def test_cpu_chosen_beside_cuda_and_shims_reversible():
    (seen,) = run_distributed(_cpu_beside_cuda, 1, timeout_s=120)
    assert seen["chosen"] == seen["device"] == Device("cpu")
    assert seen["backend"] == "gloo" and seen["shims_on"]
    assert seen["cuda_tensor_on"] == "cpu" and seen["type_name"] == "torch.cuda.FloatTensor"
    assert not seen["shims_after"] and seen["current_device_restored"]
    assert seen["type_name_after"] == "torch.FloatTensor"
    assert seen["cuda_tensor_after"] == "refused"


def test_choice_of_device(monkeypatch):
    monkeypatch.delenv("MEGATRON_VLM_DEVICE", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "3")
    with mock.patch.object(torch.cuda, "is_available", return_value=True):
        assert choose_device() == Device("cuda", 3) and choose_device().backend == "nccl"
        assert choose_device("cpu") == Device("cpu") and choose_device("cpu").backend == "gloo"
        monkeypatch.setenv("MEGATRON_VLM_DEVICE", "cpu")
        assert choose_device() == Device("cpu")
    monkeypatch.delenv("MEGATRON_VLM_DEVICE")
    with mock.patch.object(torch.cuda, "is_available", return_value=False):
        assert choose_device() == Device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            choose_device("cuda")
    with pytest.raises(ValueError, match="auto, cuda or cpu"):
        choose_device("tpu")
