"""Model backends for the eval: HF transformers in-process, and any OpenAI-compatible server.

Both take an eval item (docs/eval_format.md) and return the prediction to store: the model's raw
text, after the pre-filled assistant text when the prompt has one. Both send the same prompt
(megatron_vlm/eval/prompts.py, mode ``default`` or ``mmlongbench``).

HF in-process without torchvision: transformers 5.x builds Qwen2.5-VL's processor with a video
processor that needs torchvision, which does not install beside the CPU torch build. So
``QwenInputs`` does the processor's job itself: Qwen2VLImageProcessor (its PIL fallback) for
pixels and grids, the tokenizer's chat template for the text, and each ``<|image_pad|>`` expanded
to grid_h * grid_w / merge^2 pads, which is what Qwen2_5_VLProcessor / Qwen3VLProcessor do, and
the image tokens marked in ``mm_token_type_ids``: without it transformers 5.x gives them text
positions instead of their mRoPE ones, silently. The family (its merge size) comes from the
checkpoint's config.json. Its ``input_ids`` length is checked against the eval set's own token count
in the tests, and its ids, marks and the model's logits against HF's processor.
"""

from __future__ import annotations

import base64
import mimetypes
import os
from pathlib import Path

from megatron_vlm.eval import prompts
from megatron_vlm.models.family import DEFAULT_FAMILY, ModelFamily, get_family

IMAGE_PAD = "<|image_pad|>"
IMAGE_TOKEN_TYPE = 1  # mm_token_type_ids: 0 text, 1 image, 2 video (transformers' Qwen processors)


class QwenInputs:
    """Qwen-VL model inputs (input_ids, mm_token_type_ids, pixel_values, image_grid_thw) from a prompt
    and page images, for ``family`` (Qwen2.5-VL or Qwen3-VL)."""

    def __init__(self, tokenizer_dir: str | os.PathLike, preprocessor_dir: str | os.PathLike | None = None,
                 family: ModelFamily | None = None):
        from transformers import AutoTokenizer, Qwen2VLImageProcessor

        self.family = family or get_family(DEFAULT_FAMILY)
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self.chat_template = prompts.load_chat_template(tokenizer_dir) or self.tokenizer.chat_template
        if self.chat_template is None:
            raise ValueError(f"tokenizer in {tokenizer_dir} has no chat template")
        self.image_processor = Qwen2VLImageProcessor.from_pretrained(str(preprocessor_dir or tokenizer_dir))

    def __call__(self, question: str, images: list) -> dict:
        """Inputs of the default prompt for ``question`` over ``images``."""
        return self.encode(prompts.default_prompt(question, len(images)), images)

    def encode(self, prompt: prompts.Prompt, images: list) -> dict:
        """Inputs for ``prompt`` (its image parts index ``images``), ready to generate from."""
        import torch

        text = prompts.render(prompt, self.tokenizer, self.chat_template)
        order = [p["page"] for p in prompt.content if p["type"] == "image"]
        out = {}
        if order:
            vision = self.image_processor(images=[images[i] for i in order], return_tensors="pt")
            out["pixel_values"] = vision["pixel_values"]
            out["image_grid_thw"] = vision["image_grid_thw"]
            parts = text.split(IMAGE_PAD)
            assert len(parts) == len(order) + 1, "one <|image_pad|> per image in the template"
            pads = [IMAGE_PAD * self.family.image.grid_tokens(g) for g in vision["image_grid_thw"]]
            text = "".join(p + pad for p, pad in zip(parts, pads + [""]))
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        out["input_ids"] = ids
        out["attention_mask"] = torch.ones_like(ids)
        out["mm_token_type_ids"] = (ids == self.family.tokens.image_pad).int() * IMAGE_TOKEN_TYPE
        return out

    def prompt_tokens(self, question: str) -> int:
        return prompts.prompt_tokens(question, self.tokenizer, self.chat_template)


def load_images(item: dict) -> list:
    from PIL import Image

    images = []
    for page in item["pages"]:
        with Image.open(page["image"]) as im:
            images.append(im.convert("RGB"))
    return images


class HFBackend:
    """A Qwen2.5-VL or Qwen3-VL checkpoint (HF format; the family from its config.json) run with
    transformers in this process, greedy decoding.

    ``prompt_mode`` (prompts.PROMPT_MODES) chooses the prompt; ``max_new_tokens`` defaults to the mode's.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        device: str | None = None,
        dtype: str = "auto",
        max_new_tokens: int | None = None,
        tokenizer_dir: str | os.PathLike | None = None,
        preprocessor_dir: str | os.PathLike | None = None,
        prompt_mode: str = "default",
    ):
        import torch
        from transformers import AutoModelForImageTextToText

        from megatron_vlm.models.common.hf_config import load_hf_config
        from megatron_vlm.models.family import family_of_hf_config
        from megatron_vlm.parallel import device as default_device

        if prompt_mode not in prompts.PROMPT_MODES:
            raise ValueError(f"prompt mode must be one of {', '.join(prompts.PROMPT_MODES)}, got {prompt_mode!r}")
        self.device = device or str(default_device().torch_device)  # cuda unless none or $MEGATRON_VLM_DEVICE=cpu
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        family = family_of_hf_config(load_hf_config(model_dir))  # ValueError naming the known ones
        self.model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch_dtype)
        self.model.to(self.device).eval()
        self.inputs = QwenInputs(tokenizer_dir or model_dir, preprocessor_dir or model_dir, family)
        self.prompt_mode = prompt_mode
        self.max_new_tokens = max_new_tokens or prompts.MAX_NEW_TOKENS[prompt_mode]
        self.name = Path(model_dir).name

    def generate(self, prompt: prompts.Prompt, images: list, max_new_tokens: int | None = None) -> str:
        """Greedy continuation of ``prompt`` over ``images``: the generated text only (no prefill)."""
        import torch

        batch = {k: v.to(self.device) for k, v in self.inputs.encode(prompt, images).items()}
        with torch.inference_mode():
            out = self.model.generate(**batch, max_new_tokens=max_new_tokens or self.max_new_tokens, do_sample=False)
        new = out[0, batch["input_ids"].shape[1] :]
        return self.inputs.tokenizer.decode(new, skip_special_tokens=True)

    def answer(self, item: dict) -> str:
        """The stored prediction for ``item``: the prompt's prefill followed by the generated text."""
        prompt = prompts.build_prompt(item, self.prompt_mode)
        return prompt.output(self.generate(prompt, load_images(item)))

    def answer_stream(self, items: list[dict]):
        from megatron_vlm.eval.runner import sequential_stream

        return sequential_stream(self.answer, items)


def image_data_url(path: str | os.PathLike) -> str:
    """The file's own bytes as a data URL (no re-encoding, so the server decodes the same pixels)."""
    mime = mimetypes.guess_type(str(path))[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode('ascii')}"


def chat_request(item: dict, model: str, max_new_tokens: int, prompt_mode: str = "default") -> dict:
    """The /v1/chat/completions body for an item: its prompt with images as data URLs; greedy.

    A pre-filled assistant turn is sent as the last message with vLLM's ``continue_final_message``
    (and no generation prompt), so the server continues it as the HF backend does.
    """
    prompt = prompts.build_prompt(item, prompt_mode)
    pages = item["pages"]
    messages = prompts.chat_messages(
        prompt, lambda i: {"type": "image_url", "image_url": {"url": image_data_url(pages[i]["image"])}}
    )
    body = {"model": model, "messages": messages, "temperature": 0.0, "max_tokens": max_new_tokens}
    if prompt.prefill:
        body.update(continue_final_message=True, add_generation_prompt=False)
    return body


class OpenAIBackend:
    """Any OpenAI-compatible /v1/chat/completions server (e.g. vLLM serving the exported checkpoint).

    Requests go through megatron_vlm.utils.openai_client.ChatClient: at most ``concurrency`` in
    flight, retries with backoff and jitter, optional on-disk cache. Greedy (temperature 0).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        max_new_tokens: int | None = None,
        concurrency: int = 4,
        retries: int = 4,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 600.0,
        cache_dir: str | os.PathLike | None = None,
        prompt_mode: str = "default",
    ):
        from megatron_vlm.utils.openai_client import ChatClient

        if prompt_mode not in prompts.PROMPT_MODES:
            raise ValueError(f"prompt mode must be one of {', '.join(prompts.PROMPT_MODES)}, got {prompt_mode!r}")

        self.client = ChatClient(
            base_url,
            model,
            api_key_env=api_key_env,
            concurrency=concurrency,
            max_retries=retries,
            timeout_s=timeout_s,
            cache_dir=cache_dir,
        )
        self.model, self.concurrency, self.prompt_mode = model, concurrency, prompt_mode
        self.max_new_tokens = max_new_tokens or prompts.MAX_NEW_TOKENS[prompt_mode]
        self.name = model

    def _ask(self, item: dict) -> tuple[dict, str, str | None]:
        body = chat_request(item, self.model, self.max_new_tokens, self.prompt_mode)
        params = {k: v for k, v in body.items() if k not in ("model", "messages")}
        result = self.client.complete(body["messages"], **params)
        if not result.ok:
            return item, "", result.error
        prefill = body["messages"][-1]["content"] if body.get("continue_final_message") else ""
        return item, prefill + (result.content or ""), None

    def answer(self, item: dict) -> str:
        _, text, error = self._ask(item)
        if error:
            raise RuntimeError(error)
        return text

    def answer_stream(self, items: list[dict]):
        """(item, text, error) as answers arrive, ``concurrency`` requests at a time."""
        from concurrent.futures import ThreadPoolExecutor, as_completed

        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = [pool.submit(self._ask, item) for item in items]
            for future in as_completed(futures):
                yield future.result()
