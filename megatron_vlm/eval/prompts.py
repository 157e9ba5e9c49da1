"""The chat prompt every backend sends for an eval item (two modes), and its exact text-token count.

Modes (``tools/evaluate.py run --prompt``):

- ``default``: one user turn, all page images in order, then the question and an instruction to
  end with "Answer: <answer>"; the model writes the whole assistant turn (64 new tokens).
- ``mmlongbench``: EdinburghNLP/MMLongBench's doc-QA prompt at its first release (26197d2):
  its user template with one "Document <doc> (page <n>): <image>" line per page (doc names cut
  to 15 characters) and the question prefixed "Based on Document <doc_name>, answer the following
  question."; the assistant turn is pre-filled with "Answer:" and continued (128 new tokens, as its
  config sets). The prediction stored is "Answer:" + the generated text, as its harness stores it.
  Later MMLongBench commits dropped the "(page <n>)" part (ceedb4c); this mode keeps it.

A prompt is backend-neutral: user ``content`` parts are ``{"type": "text", "text": ...}`` or
``{"type": "image", "page": i}`` (the item's i-th page); each backend turns the images into what
it sends. The token count of the default prompt is ``prompt_tokens(question, tokenizer)`` (the
chat template without images) plus, per page, its image tokens + 2 (<|vision_start|>,
<|vision_end|>): the vision tokens are special tokens, so inserting them never changes how the
text around them tokenizes.
"""

from __future__ import annotations

from dataclasses import dataclass

PROMPT_MODES = ("default", "mmlongbench")
MAX_NEW_TOKENS = {"default": 64, "mmlongbench": 128}

INSTRUCTION = (
    "Answer the question using the document pages above. Give the final answer on the last line "
    'as "Answer: <answer>". If the pages do not contain the answer, write "Answer: Not answerable".'
)
DEFAULT_PROMPT_TOKENS = 96  # reserve when no tokenizer is given: above the ~60-80 of a typical question

MMLONGBENCH_INSTRUCTION = (
    "You are given a document with text and images, and a question. Answer the question as concisely as you "
    "can, using a single phrase or sentence if possible. If the question cannot be answered based on the "
    "information in the article, write 'Not answerable.' Write your answer in the following format:\n"
    "Answer: [answer]\n\n"
)
MMLONGBENCH_PREFILL = "Answer:"
DOC_NAME_CHARS = 15  # MMLongBench prints document names with the format spec ".15"


@dataclass(frozen=True)
class Prompt:
    """One user turn (``content`` parts) and the text the assistant turn starts with ("" for none)."""

    content: list[dict]
    prefill: str = ""

    def output(self, generated: str) -> str:
        """What is stored as the prediction: the pre-filled text followed by the generated text."""
        return self.prefill + generated


def question_text(question: str) -> str:
    return f"{question.strip()}\n{INSTRUCTION}"


def default_prompt(question: str, n_images: int) -> Prompt:
    content = [{"type": "image", "page": i} for i in range(n_images)]
    return Prompt(content + [{"type": "text", "text": question_text(question)}])


def page_labels(item: dict) -> list[tuple[str, str]]:
    """(document, page) printed before each page in the mmlongbench prompt: the page's ``doc_id``
    and ``page_label`` (the importers store MMLongBench's own), else the item's doc_id and the page index."""
    labels = []
    for i, page in enumerate(item["pages"]):
        page = page if isinstance(page, dict) else {}
        doc = page.get("doc_id", item.get("doc_id", ""))
        label = page.get("page_label", page.get("page", i))
        labels.append((str(doc), str(label)))
    return labels


def mmlongbench_prompt(item: dict) -> Prompt:
    """MMLongBench's doc-QA prompt for ``item`` (module docstring)."""
    content = [{"type": "text", "text": MMLONGBENCH_INSTRUCTION}]
    for i, (doc, label) in enumerate(page_labels(item)):
        lead = "" if i == 0 else "\n\n"
        content.append({"type": "text", "text": f"{lead}Document {doc[:DOC_NAME_CHARS]} (page {label}): "})
        content.append({"type": "image", "page": i})
    doc_name = str(item.get("doc_name", item.get("doc_id", "")))[:DOC_NAME_CHARS]
    question = f"Based on Document {doc_name}, answer the following question. {item['question']}"
    content.append({"type": "text", "text": f"\n\nQuestion: {question}"})
    return Prompt(content, MMLONGBENCH_PREFILL)


def build_prompt(item: dict, mode: str = "default") -> Prompt:
    """The prompt of ``item`` in ``mode`` (one of ``PROMPT_MODES``)."""
    if mode == "default":
        return default_prompt(item["question"], len(item["pages"]))
    if mode == "mmlongbench":
        return mmlongbench_prompt(item)
    raise ValueError(f"prompt mode must be one of {', '.join(PROMPT_MODES)}, got {mode!r}")


def chat_messages(prompt: Prompt, image_part) -> list[dict]:
    """Chat messages for ``prompt``, each image part replaced by ``image_part(page_index)``; a
    pre-filled assistant message last when the prompt has one."""
    content = [image_part(p["page"]) if p["type"] == "image" else dict(p) for p in prompt.content]
    messages = [{"role": "user", "content": content}]
    if prompt.prefill:
        messages.append({"role": "assistant", "content": prompt.prefill})
    return messages


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


def render(prompt: Prompt, tokenizer, chat_template: str | None = None) -> str:
    """The chat-templated text of ``prompt`` (images as the template writes them), ready to generate from."""
    messages = chat_messages(prompt, lambda i: {"type": "image"})
    return tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=not prompt.prefill,
        continue_final_message=bool(prompt.prefill),
        chat_template=chat_template,
    )


def prompt_tokens(question: str, tokenizer, chat_template: str | None = None) -> int:
    """Tokens of the default prompt with no images (generation prompt included)."""
    text = render(default_prompt(question, 0), tokenizer, chat_template)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
