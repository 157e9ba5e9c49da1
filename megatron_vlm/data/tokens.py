"""Qwen chat format for one training instance, and its exact token count.

An instance (full document pages + question -> answer) is laid out as the model family's chat
template renders a (default) system, a user and an assistant turn, the pages first, one
``<|vision_start|><|image_pad|>*n<|vision_end|>`` block per page (n = the page's LLM tokens after
the family's resize rule), then the question::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n     (Qwen2.5-VL; Qwen3-VL has none)
    <|im_start|>user\\n[pages]QUESTION<|im_end|>\\n
    <|im_start|>assistant\\nANSWER<|im_end|>\\n

The loss is on the answer tokens and the ``<|im_end|>`` that closes them. The text is encoded
in one call (one ``<|image_pad|>`` per page, expanded afterwards), so ids equal what the chat
template plus the tokenizer give; ``build`` and the loader both call ``encode_instance``, so they
agree to the token.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_vlm.models.family import ModelFamily

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
# Special tokens that must not appear as text in a question or answer (they would be read as markup).
SPECIAL_TEXT = (IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, "<|video_pad|>", "<|endoftext|>", "<|vision_pad|>")


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str | Path):
    """The fast tokenizer in ``path`` (a directory with tokenizer.json, or the file itself)."""
    from tokenizers import Tokenizer

    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {p}")
    return Tokenizer.from_file(str(file))


@dataclass
class EncodedInstance:
    """Token ids of one instance and which of them are targets (answer + closing <|im_end|>)."""

    input_ids: torch.Tensor  # [L] int64
    target_mask: torch.Tensor  # [L] bool: True where the token is an answer token (a loss target)


def render_text(family: ModelFamily, question: str, answer: str, num_images: int) -> tuple[str, int, int]:
    """Chat text with one <|image_pad|> per image; returns (text, answer start, answer end) in characters."""
    image_block = f"{VISION_START}{IMAGE_PAD}{VISION_END}"
    system = family.chat.system
    head = (
        (f"{IM_START}system\n{system}{IM_END}\n" if system is not None else "")
        + f"{IM_START}user\n"
        + image_block * num_images
        + f"{question}{IM_END}\n{IM_START}assistant\n"
    )
    text = head + f"{answer}{IM_END}\n"
    return text, len(head), len(head) + len(answer) + len(IM_END)


def _encode_compact(tokenizer, family: ModelFamily, question: str, answer: str, num_images: int):
    for part in (question, answer):
        if "<|" in part and any(t in part for t in SPECIAL_TEXT):
            raise ValueError("question or answer contains a chat special token")
    text, a0, a1 = render_text(family, question, answer, num_images)
    enc = tokenizer.encode(text, add_special_tokens=False)
    # A token is a target when it overlaps the answer (incl. the closing <|im_end|>); a token that
    # merges the turn's "\n" with the answer's leading whitespace is one the model must produce.
    target = [start < a1 and end > a0 for start, end in enc.offsets]
    return enc.ids, target


def count_tokens(tokenizer, family: ModelFamily, question: str, answer: str, image_tokens: list[int]) -> int:
    """Exact length of the instance in ``family``'s chat format: text tokens plus each image's LLM tokens."""
    ids, _ = _encode_compact(tokenizer, family, question, answer, len(image_tokens))
    return len(ids) - len(image_tokens) + sum(image_tokens)


def encode_instance(
    tokenizer, family: ModelFamily, question: str, answer: str, image_tokens: list[int]
) -> EncodedInstance:
    """Token ids in ``family``'s chat format with each image's <|image_pad|> repeated to its token
    count, and the target mask."""
    ids, target = _encode_compact(tokenizer, family, question, answer, len(image_tokens))
    ids_t = torch.tensor(ids, dtype=torch.int64)
    target_t = torch.tensor(target, dtype=torch.bool)
    pads = (ids_t == family.tokens.image_pad).nonzero().flatten().tolist()
    if not pads:
        return EncodedInstance(ids_t, target_t)
    repeats = torch.ones(len(ids), dtype=torch.int64)
    repeats[pads] = torch.tensor(image_tokens, dtype=torch.int64)
    return EncodedInstance(ids_t.repeat_interleave(repeats), target_t.repeat_interleave(repeats))
