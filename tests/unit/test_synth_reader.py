"""Reader questions from the template teacher on a report PDF whose facts the test wrote
(tests/qa_docs.py): answers are the values put into the PDF, no question names a page, facts that
are ambiguous in the whole document or printed in running headers/footers are never asked,
extract-multi gathers one kind, reasoning combines one column and computes right; validation
rejects each broken rule by its reason."""

from __future__ import annotations

import json

import pytest

from megatron_vlm.data import pool
from megatron_vlm.data.synth.facts import document_facts, normalize
from megatron_vlm.data.synth.teachers import template
from megatron_vlm.data.synth.validation import Validator, problems
from tests.qa_docs import check_reasoning, named_in, pool_and_qa


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    truth, pool_dir, qa_dir, summary = pool_and_qa(tmp_path_factory.mktemp("reader"), tasks=["extract-single", "extract-multi", "reasoning"])
    records = [json.loads(line) for line in (qa_dir / "records-00000.jsonl").read_text().splitlines()]
    (doc, _), = pool.iter_documents(pool_dir)
    return truth, records, doc, summary


def _truth_items(truth):
    """(kind, what names it, value, group) for every fact the PDF holds; `group` is what makes two comparable."""
    items = [("cell", (label, row, col), v, col) for (label, row, col), v in truth.cells.items()]
    items += [("quantity", (sec, before), v, "quantity") for (sec, before), v in truth.quantities.items()]
    return items


def test_answers_are_the_values_put_into_the_pdf(report):
    truth, records, _, summary = report
    tasks = {r["task"] for r in records}
    assert tasks == {"extract-single", "extract-multi", "reasoning"}, summary
    forbidden = truth.ambiguous | truth.never
    for r in records:
        q = r["question"]
        assert "page" not in q.lower() and "___" not in q, q
        assert truth.header_footer[0] not in q and "survey team" not in q, q
        named = named_in(q, _truth_items(truth), truth.sections)
        if r["task"] == "extract-single":
            assert len(named) == 1, (q, named)
            assert r["answer"] == named[0][2] and r["answer"] not in forbidden, q
        elif r["task"] == "extract-multi":
            answer = json.loads(r["answer"])
            assert answer == [n[2] for n in named] and len(answer) >= 2, (q, named)
            assert len({n[3] for n in named}) == 1, q  # one kind: one column, one unit word or section titles
            assert not set(answer) & forbidden
        else:
            assert named and len({(n[1][0], n[3]) for n in named}) == 1 and named[0][0] == "cell", (q, named)
            check_reasoning(q, r["answer"], named)
    # The template only asks what validation keeps; extract-multi and reasoning may repeat a question.
    assert set(summary["rejected"]) <= {"duplicate question"}


def test_usable_facts_are_exactly_the_unambiguous_body_facts(report):
    truth, _, doc, _ = report
    facts = document_facts(doc)
    usable = {(f.kind, normalize(f.value)) for f in facts if f.problem is None}
    expected = {("cell", normalize(v)) for v in truth.cells.values()}
    expected |= {("quantity", normalize(v)) for v in truth.quantities.values()}
    expected |= {("section", normalize(v)) for v in truth.sections.values()}
    assert usable == expected
    unusable = {f.value for f in facts if f.problem}
    assert unusable == truth.ambiguous
    assert not any(v in truth.never for _, v in usable)


def test_subsection_count_is_complete_and_right(report):
    truth, _, doc, _ = report
    facts = document_facts(doc)
    usable = [f for f in facts if f.problem is None]
    ((parent, children),) = template._subsections(usable, facts)
    expected = sorted(n for n in truth.sections if n.startswith(parent.anchors[0] + "."))
    assert [c.anchors[0] for c in children] == expected and len(expected) >= 2
    qa = template._count_question(parent, children)
    record = {**qa, "task": "reasoning", "segment": [0, truth.pages], "doc_id": doc["id"], "id": "x"}
    assert qa["answer"] == str(len(expected)) and problems(record, doc) == []


def _record(**kw):
    base = {"doc_id": "d", "task": "extract-single", "segment": [0, 6], "answer_format": "Str", "evidence_pages": [1],
            "question": "In Table 1, what is the value in the column \"Households\" for the row \"North\"?", "answer": "1,240"}
    return {**base, **kw}


def test_validation_rejects_each_rule_by_reason(report):
    _, _, doc, _ = report
    v = Validator()
    assert v.check(_record(), doc) is None
    assert v.check(_record(), doc) == "duplicate question"
    cases = {
        "question names a page": _record(question="On page 2, how many households does Table 1 give for North?"),
        "question is a fill-in-the-blank": _record(question='Complete: "The survey reached ___ households in the district"', answer="1,240", evidence_pages=[0]),
        "question names too little": _record(question="What is k?", answer="45", evidence_pages=[1]),
        "question does not pick out one fact": _record(
            question='According to the section "2.1 Sampling", the pilot sample included how many volunteers from the city?', answer="120", evidence_pages=[2]),
        "the answer text occurs more than once in the document": _record(
            question='In the table in section "2.1 Sampling", what is the status of mailing?', answer="Pending", evidence_pages=[2]),
        "answer comes from a header, footer, caption or repeated text": _record(
            question="What is the title of the annual review this report belongs to?", answer="Harlow Annual Review 2023", evidence_pages=[3]),
        "reasoning question states no operation": _record(
            task="reasoning", question='In Table 1 ("Households by district"), what about the "Households" values of "North" and "South"?', answer="2220", answer_format="Int"),
        "reasoning combines values of different kinds": _record(
            task="reasoning", answer_format="Int", answer="1195", evidence_pages=[1],
            question='What is the sum of the "Households" value of the row "North" in Table 1 and the interview length (each interview lasted how many minutes on average) in the section "2 Methods"?'),
    }
    for reason, record in cases.items():
        assert v.check(record, doc) == reason, (reason, problems(record, doc))
    scanned = {**doc, "id": "scanned", "pages": [{**p, "ocr": "tesseract", "ocr_confidence": 41.0} for p in doc["pages"]]}
    assert v.check(_record(doc_id="scanned"), scanned) == "answer comes from low-quality text"
    assert v.check(_record(question="Which district has 1,240 households?", answer="North", evidence_pages=[3]), doc) == "answer not on its evidence pages"


def test_reasoning_pairs_amounts_of_one_unit_of_measure_in_one_section():
    import random

    from megatron_vlm.data.synth.facts import Fact

    def quantity(section, before, value, unit):
        return Fact("quantity", 0, value, (section, before, unit), section=section, unit=unit, clause=f"{before} how many {unit}")

    body = quantity("2 Setup", "the body text is set in", "10", "pt")
    heading = quantity("2 Setup", "each heading is set in", "14", "pt")
    caption = quantity("3 Results", "the captions are set in", "9", "pt")  # another section
    people = quantity("2 Setup", "the study recruited", "24", "participants")  # counted nouns: not comparable
    places = quantity("2 Setup", "the pilot covered", "3", "districts")
    assert template._quantity_pairs([body, heading, caption, people, places]) == [(body, heading)]
    for seed in range(6):
        qa = template._pair_question((body, heading), random.Random(seed))
        q = qa["question"]
        first, second = sorted((body, heading), key=lambda f: q.index(f.clause))  # (1) is the clause asked first
        a, b = int(first.value), int(second.value)
        assert qa["answer"] == str(a - b if "(1) minus (2)" in qa["question"] else a + b), qa
