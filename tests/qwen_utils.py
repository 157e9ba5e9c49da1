"""Shared helpers for the Qwen2.5-VL tests: tiny configs, HF reference models, our model with HF weights."""

from __future__ import annotations

import torch

from megatron_vlm.checkpoint.hf_names import hf_to_mcore
from megatron_vlm.models.qwen2_5_vl.config import Qwen2_5_VLConfig, flavor, to_hf_config

IMAGE, VIDEO, START, END = 250, 251, 248, 249


def tiny_config(tied: bool = False, **text) -> Qwen2_5_VLConfig:
    """debug flavor with a 256-token vocabulary (special ids 248-251) so HF builds it in milliseconds."""
    return flavor("debug").replace(
        text=dict(vocab_size=256, tie_word_embeddings=tied, **text),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END,
    )


def hf_model(cfg: Qwen2_5_VLConfig, seed: int = 0, attn: str = "eager"):
    """HF Qwen2_5_VLForConditionalGeneration in float32 with random (seeded) weights, eval mode."""
    from transformers import Qwen2_5_VLConfig as HFConfig
    from transformers import Qwen2_5_VLForConditionalGeneration

    hf_cfg = HFConfig(**to_hf_config(cfg))
    hf_cfg._attn_implementation = attn
    hf_cfg.text_config._attn_implementation = attn
    hf_cfg.vision_config._attn_implementation = attn
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(hf_cfg).float().eval()
    with torch.no_grad():  # HF zero-inits biases and ones-inits norms: randomize so the map is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_q" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def our_model(cfg: Qwen2_5_VLConfig, hf, **kwargs):
    """Our model at the current parallel layout, loaded from ``hf``'s state dict through the name map."""
    from megatron_vlm.models.qwen2_5_vl.model import Qwen2_5_VLModel
    from megatron_vlm.models.qwen2_5_vl.weights import load_full_state_dict

    model = Qwen2_5_VLModel(cfg, spec="local", attention_backend="torch", **kwargs).eval()
    load_full_state_dict(model, hf_to_mcore(hf.state_dict(), cfg))
    return model


def single_rank_fixture(device: str = "cpu"):
    """Body of a module-scoped fixture: Megatron's groups on one rank on ``device`` (cpu: gloo, even
    beside a GPU; GPU tests pass "cuda"), torn down afterwards."""
    import os

    from megatron_vlm.parallel import ParallelLayout, destroy, initialize
    from tests.dist_utils import free_port

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    initialize(ParallelLayout(), device=device)
    yield
    destroy()
