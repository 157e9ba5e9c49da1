"""The synth stage with the openai teacher against the loopback fake server: pages go out as
images with their OCR text, injected faults are retried, every job ends as a record, a rejection
or a failure with its reason, and a run killed mid-way and restarted re-sends nothing answered."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_vlm.data import pool
from megatron_vlm.data.sample_pdfs import make_corpus
from megatron_vlm.data.synth import run as synth
from tests.fake_openai import FakeOpenAI

REPO = Path(__file__).resolve().parents[2]
TEACHER_TASKS = ["extract-single", "extract-multi", "reasoning"]


def job_of(body: dict) -> tuple[str, int, int, bool, dict[int, str], int]:
    """(task, first page, last page, is a re-ask, {page: OCR text}, images) read from a request."""
    user = body["messages"][1]["content"]
    texts = [c["text"] for c in user if c["type"] == "text"]
    task, first, last = re.search(r"Task \((\S+), pages (\d+)-(\d+)\)", texts[-1]).groups()
    ocr = {}
    for t in texts:
        if m := re.match(r"OCR text of page (\d+):\n", t):
            ocr[int(m[1])] = t[m.end():]
    images = sum(c["type"] == "image_url" for c in user)
    return task, int(first), int(last), len(body["messages"]) > 2, ocr, images


def teacher_reply(body: dict) -> str:
    """A well-formed reader question about the quantities the segment's OCR text states (sample_pdfs
    writes "In 2019 the revenue of the north division was 4,312 units." under "Section N: Topic")."""
    task, first, last, _, ocr, _ = job_of(body)
    facts = []
    for p, text in sorted(ocr.items()):
        heading = next(line for line in text.splitlines() if line.startswith("Section "))
        for m in re.finditer(r"In (\d{4}) the ([a-z ]+?) of the (\w+) division was ([\d,]+) units", text):
            question = f'According to the section "{heading}", in {m[1]} the {m[2]} of the {m[3]} division was how many units'
            facts.append((p, question, m[4]))
    (p1, q1, v1), (p2, q2, v2) = facts[0], facts[-1]
    if task == "extract-single":
        qa = {"question": q1 + "?", "answer": v1, "answer_format": "Int", "evidence_pages": [p1]}
    elif task == "extract-multi":
        qa = {"question": f"Answer in order: (1) {q1}; (2) {q2}?", "answer": [v1, v2], "answer_format": "List", "evidence_pages": [p1, p2]}
    else:
        total = int(v1.replace(",", "")) + int(v2.replace(",", ""))
        qa = {"question": f"What is the sum of (1) and (2): (1) {q1}; (2) {q2}?", "answer": str(total), "answer_format": "Int", "evidence_pages": sorted({p1, p2})}
    return json.dumps({**qa, "evidence_description": "the division figures in the sections named"})


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_openai")
    make_corpus(root / "pdfs", n_docs=2, pages=(6, 7), seed=2, scanned=False)
    assert pool.build_pool(root / "pdfs", root / "pool", no_ocr=True)["ok"] == 2
    return root / "pool"


def synth_argv(pool_dir, out, url, *extra) -> list[str]:
    return ["--pool", str(pool_dir), "--output", str(out), "--teacher", "openai", "--teacher-url", url, "--teacher-model", "fake-vlm",
            "--segment-pages", "3", "3", "--tasks", *TEACHER_TASKS, "--send-ocr-text", "--request-timeout", "1.5",
            "--max-retries", "3", "--concurrency", "3", *extra]


def run_synth(argv) -> int:
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    return synth.main(parser.parse_args([*argv, "--quiet"]))


def test_every_job_ends_answered_or_failed_with_reason(pool_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("megatron_vlm.utils.openai_client.ChatClient._delay", lambda self, attempt, wait_s: 0.01)

    def faults(n, body):
        task, first, _, reask, _, _ = job_of(body)
        if task == "reasoning" and first == 4:
            return "500"  # one job whose server always fails
        return {1: "429", 2: "500", 3: "timeout", 5: "broken_json", 8: "disconnect", 13: "503"}.get(n)

    def answer(body):
        task, first, _, reask, _, _ = job_of(body)
        if task == "extract-multi" and first == 1:
            return "Sorry, here is no JSON." if not reask else teacher_reply(body)  # fixed by one re-ask
        if task == "extract-single" and first == 4:
            return '{"question": "q"}'  # off-schema every time
        if task == "reasoning" and first == 1 and not reask:  # evidence outside the segment: re-asked
            return json.dumps({**json.loads(teacher_reply(body)), "evidence_pages": [first + 5]})
        return teacher_reply(body)

    with FakeOpenAI(answer=answer, faults=faults, hang_s=2.5) as server:
        assert run_synth(synth_argv(pool_dir, tmp_path, server.url)) == 0
        bodies = [e["body"] for e in server.log]
    assert all(job_of(b)[5] == 3 and len(job_of(b)[4]) == 3 for b in bodies)  # 3 page images + their OCR text
    summary = json.loads((tmp_path / "summary.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "records-00000.jsonl").read_text().splitlines()]
    failures = [json.loads(line) for line in (tmp_path / "failures-00000.jsonl").read_text().splitlines()]
    n_jobs = summary["segments"] * len(TEACHER_TASKS)
    assert summary["segments"] == 4 and summary["candidates"] + len(failures) == n_jobs
    assert summary["candidates"] == len(records) + sum(summary["rejected"].values())
    reasons = sorted(f["reason"] for f in failures)
    assert len(failures) == 4 and all(f["segment"][0] == 3 for f in failures)  # page 4 = index 3, in both docs
    assert sum(r.startswith("request failed: HTTP 500 (gave up after 4 attempts)") for r in reasons) == 2
    assert sum(r == "off-schema after 2 re-asks: missing keys: answer, answer_format, evidence_pages, evidence_description" for r in reasons) == 2
    usage = summary["teacher_usage"]
    assert usage["reasks"] == 2 * 2 + 2 + 2 and usage["answered"] + usage["failed"] == len({e["key"] for e in server.log})
    assert all(r["teacher"] == "openai:fake-vlm" and r["prompt_version"] for r in records)
    multi = [r for r in records if r["task"] == "extract-multi" and r["segment"][0] == 0]
    assert len(multi) == 2 and all(len(json.loads(r["answer"])) == 2 for r in multi)


def test_killed_run_restarted_resends_nothing_answered(pool_dir, tmp_path):
    cache = tmp_path / "cache"
    with FakeOpenAI(answer=teacher_reply, delay_s=0.15) as server:
        argv = synth_argv(pool_dir, tmp_path, server.url, "--batch-jobs", "3", "--concurrency", "2", "--request-timeout", "5")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "synth", *argv], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(list(cache.rglob("*.json"))) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        answered = {p.stem for p in cache.rglob("*.json")}
        sent_before = len(server.log)
        assert 4 <= len(answered) < 12 and not (tmp_path / "summary.json").exists()
        assert run_synth(argv) == 0
        resent = [e["key"] for e in server.log[sent_before:]]
    assert resent and not set(resent) & answered
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["teacher_usage"]["cache_hits"] >= len(answered)
    assert summary["candidates"] == summary["segments"] * len(TEACHER_TASKS) == 12


def test_dry_run_writes_the_exact_requests_and_sends_nothing(pool_dir, tmp_path):
    with FakeOpenAI(answer=teacher_reply) as server:
        assert run_synth(synth_argv(pool_dir, tmp_path / "dry", server.url, "--dry-run")) == 0
        assert server.log == []
        lines = [json.loads(line) for line in (tmp_path / "dry" / "requests-00000.jsonl").read_text().splitlines()]
        assert not (tmp_path / "dry" / "records-00000.jsonl").exists()
        assert run_synth(synth_argv(pool_dir, tmp_path / "real", server.url)) == 0
        sent = [e["body"] for e in server.log]
    assert len(lines) == len(sent) == 12 and all(line["url"] == f"{server.url}/chat/completions" for line in lines)
    key = lambda body: json.dumps(body, sort_keys=True)  # noqa: E731
    assert sorted(key(line["payload"]) for line in lines) == sorted(key(b) for b in sent)
    system = lines[0]["payload"]["messages"][0]["content"]
    assert "Never mention a page" in system and "name the page" not in system.lower()
    # Answered requests are in the cache now: a second dry run into the same directory has none left to send.
    assert run_synth(synth_argv(pool_dir, tmp_path / "real", server.url, "--dry-run")) == 0
    assert (tmp_path / "real" / "requests-00000.jsonl").read_text() == ""


def test_teacher_questions_that_break_the_rules_are_rejected_by_reason(pool_dir, tmp_path):
    def answer(body):
        task = job_of(body)[0]
        reply = json.loads(teacher_reply(body))
        if task == "extract-single":
            reply["question"] = f"On page {reply['evidence_pages'][0]}, {reply['question'][0].lower()}{reply['question'][1:]}"
        elif task == "extract-multi":
            reply["question"] = "___"
        return json.dumps(reply)

    with FakeOpenAI(answer=answer) as server:
        assert run_synth(synth_argv(pool_dir, tmp_path, server.url)) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    segments = summary["segments"]
    assert summary["rejected"] == {"question names a page": segments, "question is a fill-in-the-blank": segments}
    assert summary["records"] == {"reasoning": segments}
