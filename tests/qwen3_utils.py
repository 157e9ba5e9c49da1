"""Shared helpers for the Qwen3-VL tests: tiny configs, HF reference models and position ids, our model with HF weights."""

from __future__ import annotations

import torch

from megatron_vlm.checkpoint.hf_names_qwen3_vl import hf_to_mcore
from megatron_vlm.models.qwen3_vl.config import Qwen3VLConfig, flavor, to_hf_config
from tests.qwen_utils import END, IMAGE, START, VIDEO

PATCH_DIM = flavor("debug").vision.patch_dim


def tiny_config(tied: bool = False, **text) -> Qwen3VLConfig:
    """debug flavor with a 256-token vocabulary (special ids 248-251) so HF builds it in milliseconds."""
    return flavor("debug").replace(
        text=dict(vocab_size=256, tie_word_embeddings=tied, **text),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END,
    )


def hf_model(cfg: Qwen3VLConfig, seed: int = 0, attn: str = "eager"):
    """HF Qwen3VLForConditionalGeneration in float32 with random (seeded) weights, eval mode."""
    from transformers import Qwen3VLConfig as HFConfig
    from transformers import Qwen3VLForConditionalGeneration

    hf_cfg = HFConfig(**to_hf_config(cfg))
    for c in (hf_cfg, hf_cfg.text_config, hf_cfg.vision_config):
        c._attn_implementation = attn
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(hf_cfg).float().eval()
    with torch.no_grad():  # HF zero-inits biases and ones-inits norms: randomize so the map is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            if "pos_embed" in name:  # HF's init is N(0, 0.02): make the position grid matter
                p.normal_(0, 1.0)
    return model


def hf_positions(hf, ids: torch.Tensor, image_grid=None, video_grid=None) -> torch.Tensor:
    """HF's mRoPE ids [3, T] of one sample (its get_rope_index: the reference, not ours)."""
    mm = ((ids == IMAGE) * 1 + (ids == VIDEO) * 2).int()[None]
    if image_grid is None and video_grid is None:
        return torch.arange(len(ids)).expand(3, -1)
    pos, _ = hf.model.get_rope_index(ids[None], mm, image_grid_thw=image_grid,
                                     video_grid_thw=None if video_grid is None else video_grid.clone())
    return pos[:, 0]


def our_model(cfg: Qwen3VLConfig, hf, **kwargs):
    """Our model at the current parallel layout, loaded from ``hf``'s state dict through the name map."""
    from megatron_vlm.models.qwen2_5_vl.weights import load_full_state_dict
    from megatron_vlm.models.qwen3_vl.model import Qwen3VLModel

    model = Qwen3VLModel(cfg, spec="local", attention_backend="torch", **kwargs).eval()
    load_full_state_dict(model, hf_to_mcore(hf.state_dict(), cfg))
    return model


def sample(grids: list[list[int]], seed: int, video: bool = False, text: int = 4):
    """Token ids with text between vision blocks (a video: one block per temporal patch, text
    standing for its timestamp in between, as Qwen3-VL writes videos) and random patches."""
    gen = torch.Generator().manual_seed(seed)
    pad = VIDEO if video else IMAGE
    ids = torch.randint(0, 240, (text,), generator=gen).tolist()
    for t, h, w in grids:
        for _ in range(t if video else 1):
            ids += [START] + [pad] * ((1 if video else t) * h * w // 4) + [END]
            ids += torch.randint(0, 240, (text,), generator=gen).tolist()
    grid = torch.tensor(grids, dtype=torch.long) if grids else None
    pixels = torch.randn(int(grid.prod(-1).sum()), PATCH_DIM, generator=gen) if grids else None
    return torch.tensor(ids), grid, pixels
