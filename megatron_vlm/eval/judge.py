"""Optional LLM judge: asks any OpenAI-compatible endpoint whether a prediction matches the answer.

The rule-based score (scoring.py) stays the headline; the judge adds ``judge_score`` (1.0 / 0.0,
None when the judge failed or replied with neither yes nor no) for a second opinion on free-form
string answers. Requests go through megatron_vlm.utils.openai_client (concurrency, retries, cache).
"""

from __future__ import annotations

import re

JUDGE_PROMPT = (
    "You grade answers to questions about documents.\n"
    "Question: {question}\nReference answer: {answer}\nModel answer: {prediction}\n\n"
    "Does the model answer give the same answer as the reference (ignore wording, formatting and units "
    "written differently; numbers must agree)? Reply with one word: yes or no."
)


def judge_messages(record: dict) -> list[dict]:
    text = JUDGE_PROMPT.format(
        question=record.get("question", ""),
        answer=record["answer"],
        prediction=record.get("extracted", record["prediction"]),
    )
    return [{"role": "user", "content": text}]


def parse_verdict(text: str | None) -> float | None:
    """1.0 for a reply starting with yes, 0.0 for no, None otherwise."""
    m = re.match(r"\W*(yes|no)\b", (text or "").strip(), re.I)
    return None if m is None else float(m.group(1).lower() == "yes")


def judge_records(
    records: list[dict],
    url: str,
    model: str,
    concurrency: int = 4,
    retries: int = 4,
    api_key_env: str = "OPENAI_API_KEY",
    cache_dir=None,
) -> list[dict]:
    """Records with ``judge_score`` (and ``judge_error`` when the request failed) added."""
    from megatron_vlm.utils.openai_client import ChatClient

    client = ChatClient(
        url, model, api_key_env=api_key_env, concurrency=concurrency, max_retries=retries, cache_dir=cache_dir
    )
    results = client.complete_many([(judge_messages(r), {"temperature": 0.0, "max_tokens": 4}) for r in records])
    out = []
    for record, result in zip(records, results):
        row = {**record, "judge_score": parse_verdict(result.content) if result.ok else None}
        if not result.ok:
            row["judge_error"] = result.error
        out.append(row)
    return out


def judge_accuracy(records: list[dict]) -> dict:
    judged = [r["judge_score"] for r in records if r.get("judge_score") is not None]
    return {
        "n": len(judged),
        "unjudged": len(records) - len(judged),
        "accuracy": sum(judged) / len(judged) if judged else 0.0,
    }
