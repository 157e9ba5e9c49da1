"""Qwen3-VL mRoPE position ids (models/qwen3_vl/position_ids.py) equal transformers' get_rope_index.

Inputs are what HF's Qwen3-VL processor makes (built from the reference files): text, images of
different sizes, a video (frames with their text timestamps), and a mix; packed sequences give
each sub-sequence HF's ids for that sample alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_vlm.models.qwen3_vl import position_ids
from megatron_vlm.models.qwen3_vl.family import FAMILY


@pytest.fixture(scope="module")
def processor(qwen3_processor_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(qwen3_processor_dir)


def _image(h, w, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _sample(processor, items, question="What is shown?", answer="A page."):
    """HF processor output for one chat turn with ``items`` ('image', (h, w)) / ('video', (frames, h, w, fps))."""
    from transformers.video_utils import VideoMetadata

    content, images, videos, metadata = [], [], [], []
    for kind, spec in items:
        content.append({"type": kind})
        if kind == "image":
            images.append(_image(*spec, seed=len(images)))
        else:
            frames, h, w, fps = spec
            videos.append(np.random.default_rng(7).integers(0, 256, (frames, h, w, 3), dtype=np.uint8))
            metadata.append(VideoMetadata(total_num_frames=frames, fps=fps, frames_indices=list(range(frames))))
    messages = [{"role": "user", "content": [*content, {"type": "text", "text": question}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    text = processor.apply_chat_template(messages, tokenize=False)
    kw = {"videos": videos, "video_metadata": metadata, "do_sample_frames": False} if videos else {}
    return processor(text=[text], images=images or None, return_tensors="pt", **kw)


def _hf_ids(qwen3_hf_rope, out):
    return qwen3_hf_rope(out["input_ids"][0], out["mm_token_type_ids"][0], out.get("image_grid_thw"),
                         out.get("video_grid_thw"))


CASES = {
    "text": [],
    "one image": [("image", (300, 200))],
    "three non-square images": [("image", (130, 420)), ("image", (700, 260)), ("image", (97, 64))],
    "video": [("video", (8, 96, 128, 4.0))],
    "images and videos": [("image", (64, 250)), ("video", (6, 64, 96, 2.0)), ("image", (200, 90)),
                          ("video", (4, 128, 64, 24.0))],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_hf_get_rope_index(processor, qwen3_hf_rope, case):
    out = _sample(processor, CASES[case])
    ref, ref_delta = _hf_ids(qwen3_hf_rope, out)
    ids = out["input_ids"][0]
    ours, delta = position_ids.mrope_position_ids(ids, out.get("image_grid_thw"), out.get("video_grid_thw"))
    assert torch.equal(ours, ref) and delta == ref_delta
    # The family's entry point (what packing calls) gives the same ids.
    assert torch.equal(FAMILY.position_ids(ids, out.get("image_grid_thw"), out.get("video_grid_thw")), ref)


def test_video_frames_carry_timestamps_and_restart_time(processor):
    """A video of 4 frame groups is 4 blocks, each after its timestamp text; every frame's tokens
    share one t id (time is in the text), unlike Qwen2.5-VL where t advances per frame group."""
    out = _sample(processor, CASES["video"])
    text = processor.tokenizer.decode(out["input_ids"][0])
    assert [f"<{t:.1f} seconds>" in text for t in (0.125, 0.625, 1.125, 1.625)] == [True] * 4  # (2k + 2k+1) / 2 / fps
    t, h, w = out["video_grid_thw"][0].tolist()
    ours, _ = position_ids.mrope_position_ids(out["input_ids"][0], None, out["video_grid_thw"])
    pads = out["input_ids"][0] == FAMILY.tokens.video_pad
    frame_tokens = h * w // FAMILY.image.merge_size**2
    blocks = ours[:, pads].reshape(3, t, frame_tokens)
    assert all(len(set(blocks[0, k].tolist())) == 1 for k in range(t))
    assert blocks[0, 1, 0] > blocks[0, 0, 0]  # later frames start later: after the earlier frame and the timestamp


def test_packed_sub_sequences_equal_hf_alone(processor, qwen3_hf_rope):
    """Three samples packed with padding between and after: each sub-sequence has HF's ids of that sample."""
    samples = [_sample(processor, CASES[c]) for c in ("three non-square images", "text", "images and videos")]
    pad = 5
    pieces, bounds, images, videos = [], [0], [], []
    for out in samples:
        pieces += [out["input_ids"][0], torch.full((pad,), FAMILY.tokens.pad)]
        bounds.append(bounds[-1] + out["input_ids"].shape[1])  # the pad tokens go to the next sub-sequence's slot
        bounds.append(bounds[-1] + pad)
        images += [out["image_grid_thw"]] if "image_grid_thw" in out else []
        videos += [out["video_grid_thw"]] if "video_grid_thw" in out else []
    packed = torch.cat(pieces + [torch.full((7,), FAMILY.tokens.pad)])
    cu = torch.tensor(bounds)
    ours = position_ids.packed_mrope_position_ids(packed, cu, torch.cat(images), torch.cat(videos))
    for k, out in enumerate(samples):
        start, end = bounds[2 * k], bounds[2 * k + 1]
        ref, _ = _hf_ids(qwen3_hf_rope, out)
        assert torch.equal(ours[:, start:end], ref)
        assert torch.equal(ours[:, end : bounds[2 * k + 2]], torch.arange(pad).expand(3, -1))  # a text-only sub-sequence
    assert torch.equal(ours[:, bounds[-1] :], torch.arange(7).expand(3, -1))


def test_mismatched_grids_are_refused(processor):
    out = _sample(processor, CASES["images and videos"])
    ids = out["input_ids"][0]
    with pytest.raises(ValueError, match="more video pad runs"):
        position_ids.mrope_position_ids(ids, out["image_grid_thw"], out["video_grid_thw"][:1])
    with pytest.raises(ValueError, match="more image grids"):
        position_ids.mrope_position_ids(ids, torch.cat([out["image_grid_thw"]] * 2), out["video_grid_thw"])
