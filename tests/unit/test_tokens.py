"""Chat format and token counts against transformers' tokenizer and Qwen2.5-VL's chat template."""

from __future__ import annotations

import json

import pytest

from megatron_vlm.data.tokens import count_tokens, encode_instance, load_tokenizer
from megatron_vlm.models.family import get_family

QWEN = get_family("qwen2_5_vl")

CASES = [
    ("What is the total revenue in 2021 reported on page 3?", "4,512 million USD", [2508, 2508, 12]),
    ("List the authors.", " ['A. Smith', 'B. Jones']\n", [4]),
    ("¿Cuál es el título? 日本語のテキスト", "42", []),
    ("Q with trailing newline\n", "\nanswer starting with newline", [1, 1, 1]),
]


def _reference_ids(tok_dir, question, answer, image_tokens):
    """Qwen2.5-VL's own chat template rendered by transformers, pads expanded, tokenized by HF."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    template = json.loads((tok_dir / "chat_template.json").read_text())["chat_template"]
    messages = [
        {"role": "user", "content": [{"type": "image"} for _ in image_tokens] + [{"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    text = tok.apply_chat_template(messages, chat_template=template, tokenize=False)
    parts = text.split("<|image_pad|>")
    assert len(parts) == len(image_tokens) + 1
    text = parts[0] + "".join("<|image_pad|>" * n + p for n, p in zip(image_tokens, parts[1:]))
    return tok(text, add_special_tokens=False)["input_ids"], tok


@pytest.mark.parametrize("question,answer,image_tokens", CASES)
def test_ids_equal_chat_template(qwen_tokenizer_dir, question, answer, image_tokens):
    tokenizer = load_tokenizer(qwen_tokenizer_dir)
    ref_ids, hf_tok = _reference_ids(qwen_tokenizer_dir, question, answer, image_tokens)

    enc = encode_instance(tokenizer, QWEN, question, answer, image_tokens)

    assert enc.input_ids.tolist() == ref_ids
    assert count_tokens(tokenizer, QWEN, question, answer, image_tokens) == len(ref_ids)
    # The targets are exactly the answer followed by the <|im_end|> closing the assistant turn.
    targets = enc.input_ids[enc.target_mask].tolist()
    decoded = hf_tok.decode(targets)
    # (A leading-whitespace answer may share its first token with the turn's "\n".)
    assert decoded.endswith(answer + "<|im_end|>") and not decoded[: -len(answer) - 10].strip()
    if not answer[:1].isspace():
        assert decoded == answer + "<|im_end|>"
    # ... and they are the last tokens but one (the final "\n" is not a target).
    last = enc.target_mask.nonzero().flatten()
    assert last[-1].item() == len(ref_ids) - 2 and (last.diff() == 1).all()


def test_special_token_text_is_refused(qwen_tokenizer_dir):
    tokenizer = load_tokenizer(qwen_tokenizer_dir)
    with pytest.raises(ValueError, match="special token"):
        count_tokens(tokenizer, QWEN, "what is <|image_pad|>?", "x", [])
