"""The `openai` teacher: any OpenAI-compatible chat-completions endpoint writes the QA pairs.

Each job sends its segment's pages as images (and their OCR text with --send-ocr-text) with the
task's instruction (prompts.py). A reply that is not the JSON object asked for (or names evidence pages outside the segment) is asked again,
up to --max-reasks times, with the reason in the conversation; a job whose request fails for good
(retries exhausted, 4xx) or whose replies stay off-schema ends as a failure with its reason.
Transport, retries, concurrency, the request cache and accounting live in ChatClient.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from megatron_vlm.data.synth.prompts import PROMPT_VERSION, build_messages, parse_answer, reask_message
from megatron_vlm.data.synth.teachers import Answer, Job
from megatron_vlm.utils.openai_client import ChatClient, request_key


class OpenAITeacher:
    name = "openai"
    prompt_version = PROMPT_VERSION

    def __init__(self, client: ChatClient, send_text: bool = False, max_reasks: int = 2, params: dict | None = None):
        self.client, self.send_text, self.max_reasks = client, send_text, max_reasks
        self.params = params or {}
        self.record_name = f"openai:{client.model}"
        self._reasks: Counter = Counter()
        self._lock = threading.Lock()

    @classmethod
    def from_args(cls, args) -> OpenAITeacher:
        if not args.teacher_url or not args.teacher_model:
            raise ValueError("--teacher openai needs --teacher-url and --teacher-model")
        client = ChatClient(
            args.teacher_url, args.teacher_model, api_key_env=args.api_key_env, concurrency=args.concurrency,
            max_retries=args.max_retries, timeout_s=args.request_timeout,
            cache_dir=args.cache_dir or Path(args.output) / "cache",
        )
        params = {"temperature": args.temperature, "max_tokens": args.max_tokens, "seed": args.seed}
        return cls(client, send_text=args.send_ocr_text, max_reasks=args.max_reasks, params=params)

    @property
    def concurrency(self) -> int:
        return self.client.concurrency

    def answer(self, jobs: list[Job]) -> list[Answer]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self.answer_one, jobs))

    def first_request(self, job: Job) -> tuple[dict, bool]:
        """(the payload this job's first request sends, whether the cache already answers it)."""
        payload = self.client.payload(build_messages(job, self.send_text), **self.params)
        return payload, self.client.cached(request_key(payload)) is not None

    def answer_one(self, job: Job) -> Answer:
        messages = build_messages(job, self.send_text)
        error = ""
        for attempt in range(self.max_reasks + 1):
            result = self.client.complete(messages, **self.params)
            if not result.ok:
                return Answer(job, failure=f"request failed: {result.error}")
            qa, error = parse_answer(result.content)
            first, last = job.segment
            if qa is not None and not all(first <= p < last for p in qa["evidence_pages"]):
                qa, error = None, f"evidence_pages must be page numbers from {first + 1} to {last}"
            if qa is not None:
                return Answer(job, qa=qa)
            if attempt < self.max_reasks:
                with self._lock:
                    self._reasks[error] += 1
                messages = messages + [{"role": "assistant", "content": result.content}, reask_message(error)]
        return Answer(job, failure=f"off-schema after {self.max_reasks} re-asks: {error}")

    def usage(self) -> dict:
        with self._lock:
            reasks = sum(self._reasks.values())
        return {**self.client.usage(), "reasks": reasks}
