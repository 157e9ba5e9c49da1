"""Teachers turn jobs (a document segment and a task type) into candidate QA pairs.

A teacher has `name`, `prompt_version`, `concurrency` (jobs it can usefully take at once, from
threads), `answer_one(job) -> Answer` and `answer(jobs) -> list[Answer]`, one Answer per job in
order: the candidate QA dict (docs/formats.md section 2 fields question, answer, answer_format,
evidence_pages, evidence_description) or the reason it has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Job:
    doc: dict  # the pool document json
    segment: tuple[int, int]  # [first page, last page exclusive)
    task: str
    index: int  # k-th job for this (segment, task)
    seed: int
    images: dict[int, bytes] = field(default_factory=dict)  # page index -> encoded image (openai only)


@dataclass
class Answer:
    job: Job
    qa: dict | None = None
    failure: str | None = None  # why there is no qa


def make_teacher(args):
    if args.teacher == "template":
        from megatron_vlm.data.synth.teachers.template import TemplateTeacher

        return TemplateTeacher()
    if args.teacher == "openai":
        from megatron_vlm.data.synth.teachers.openai import OpenAITeacher

        return OpenAITeacher.from_args(args)
    raise ValueError(f"unknown --teacher {args.teacher}")
