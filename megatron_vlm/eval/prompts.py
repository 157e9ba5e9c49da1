"""The chat prompt every backend sends for an eval item, and its exact text-token count.

User turn: all page images in order, then the question and the answer instruction. The token
count of the whole prompt is ``prompt_tokens(question, tokenizer)`` (the chat template without
images) plus, per page, its image tokens + 2 (<|vision_start|>, <|vision_end|>): the vision
tokens are special tokens, so inserting them never changes how the text around them tokenizes.
"""

from __future__ import annotations

INSTRUCTION = (
    "Answer the question using the document pages above. Give the final answer on the last line "
    'as "Answer: <answer>". If the pages do not contain the answer, write "Answer: Not answerable".'
)
DEFAULT_PROMPT_TOKENS = 96  # reserve when no tokenizer is given: above the ~60-80 of a typical question


def question_text(question: str) -> str:
    return f"{question.strip()}\n{INSTRUCTION}"


def messages(question: str, images: list) -> list[dict]:
    """OpenAI/HF chat messages: one user turn with the images (any objects the caller passes) then the text."""
    content = [{"type": "image", "image": im} for im in images]
    content.append({"type": "text", "text": question_text(question)})
    return [{"role": "user", "content": content}]


def load_chat_template(tokenizer_dir) -> str | None:
    """The multimodal chat template: chat_template.json (or .jinja) beside the tokenizer, if there is one.

    Qwen2.5-VL ships its image-aware template there; tokenizer_config.json may hold the text-only one.
    """
    import json
    from pathlib import Path

    d = Path(tokenizer_dir)
    if (d / "chat_template.json").is_file():
        return json.loads((d / "chat_template.json").read_text())["chat_template"]
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text()
    return None


def prompt_tokens(question: str, tokenizer, chat_template: str | None = None) -> int:
    """Tokens of the chat-templated prompt with no images (generation prompt included)."""
    text = tokenizer.apply_chat_template(
        messages(question, []), tokenize=False, add_generation_prompt=True, chat_template=chat_template
    )
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
