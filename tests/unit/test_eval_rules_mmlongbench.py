"""MMLongBench's doc-QA scoring (``--rules mmlongbench``) on hand-worked cases.

Every expected value below was worked out by hand from the rules in EdinburghNLP/MMLongBench at
26197d2 (utils.py ``parse_output`` / ``eval_docqa_score``, data.py's doc-QA post-processing) and
then checked by running that commit's own code on the same cases (outside this repository; the
command is in docs/eval_format.md). Comments name the rule and, where it differs, what the legacy
rules give, so each listed difference is pinned by a case.
"""

from __future__ import annotations

import json

import pytest

from megatron_vlm.eval import rules_legacy
from megatron_vlm.eval.rules_mmlongbench import parse_answer, score_answer, score_output
from megatron_vlm.eval.scoring import default_rules, score_records

# (model output as stored, i.e. with the pre-filled "Answer:" in front) -> parsed answer
PARSE = [
    ("Answer: 10:30 a.m.\nExplanation: page 3 says so.", "10:30 a.m."),  # to the end of the first Answer: line
    ("Answer: The total is 5\nAnswer: 6", "The total is 5"),  # the FIRST marker wins (legacy: the last, "6")
    ("Answer:Answer: 42", "42"),  # one repeated prefix dropped
    ("answer: ANSWER: x", "x"),  # any case
    ("blue\nred", "blue"),  # no marker: the first line (legacy: the last line, "red")
    ("\nfoo", ""),  # ... even when it is empty
    ("I think so. Answer: yes, it is.", "yes, it is."),  # the marker anywhere in the line; no period dropped
]

# (answer, parsed prediction, answer_format, score)
CASES = [
    # Integer: any whole number in the prediction counts (legacy: the first number only)
    ("5", "There are 3 pears and 5 apples", "Integer", 1.0),
    (5, "5.5", "Integer", 0.0),
    (5, "5.0", "Integer", 1.0),
    ("1,204", "1204 units", "Integer", 1.0),
    ("12 million", "12", "Integer", 1.0),  # a unit word at the end of the answer is dropped
    ("$35", "35 dollars", "Integer", 1.0),
    (7, "seven", "Integer", 0.0),
    (2019, "2019-2020", "Integer", 1.0),  # numbers 2019 and -2020
    # Float: any number within 1% of the answer, answer / 100 or answer x 100
    (0.25, "25%", "Float", 1.0),
    (0.25, "25", "Float", 1.0),
    ("12.5%", "0.125", "Float", 1.0),
    (100.0, "99.0", "Float", 1.0),  # |1| <= 1% of 100
    (100.0, "98.9", "Float", 0.0),
    (3.14, "about 3.14159", "Float", 1.0),
    (2.5, "between 1 and 2.52", "Float", 1.0),
    (0.25, "2.5", "Float", 0.0),
    # String, exact-match kinds: raw, case-sensitive substring of the prediction (legacy: equality after cleaning)
    ("https://example.com/a", "see https://example.com/a for details", "String", 1.0),
    ("https://example.com/a", "HTTPS://EXAMPLE.COM/A", "String", 0.0),
    ("10:30 a.m.", "10:30 a.m.", "String", 1.0),
    ("10:30 a.m.", "10:30 am", "String", 0.0),
    ("jane.doe@example.org", "Jane.Doe@example.org", "String", 0.0),  # legacy lower-cases: 1
    ("2019-03-04", "on 2019-03-04", "String", 1.0),
    ("12 34", "call 12 34 now", "String", 1.0),
    ("report.py", "The file is report.py", "String", 1.0),
    ("page 5", "see page 5", "String", 1.0),
    # ... and the patterns are narrower than "URLs, dates, emails" (these fall to token F1)
    ("Page 5", "page 5", "String", 1.0),  # "^page" is case-sensitive: F1 of identical tokens
    ("www.example.com", "example.com", "String", 0.0),  # no "https://": F1 of "wwwexamplecom" vs "examplecom"
    ("1-2-3", "1 2 3", "String", 0.0),  # one "-group" only: F1 of "123" vs "1 2 3"
    ("2019", "in 2019", "String", 1.0),  # a digit code: substring
    # String, otherwise: SQuAD token F1, no threshold (legacy: ANLS with a 0.5 cut-off)
    ("red fox jumps", "the red fox", "String", 0.8),  # article dropped: P 2/2, R 2/3
    ("Blue whale", "A blue whale.", "String", 1.0),
    ("red fox jumps", "fox is blue", "String", 1 / 3),  # kept although below 0.5
    ("Annual Report (2020)", "annual report", "String", 0.8),  # parentheses are not removed
    ("Latinos interviewed by cellphone", "Not answerable", "String", 0.0),
    # None: token F1 against "Not answerable" (legacy: synonyms map to 0/1)
    ("Not answerable", "Not answerable.", "None", 1.0),
    ("Not answerable", "The question is not answerable", "None", 2 / 3),
    ("Not answerable", "unanswerable", "None", 0.0),  # legacy: 1
    ("Not answerable", "42", "None", 0.0),
    # List: plain strings merged into one item; each item against the whole prediction; the mean
    ('["Paris", "Rome"]', "Rome, Paris and Berlin", "List", 2 / 3),  # F1("paris rome", 4 tokens); legacy: 0
    ('[5, "https://a.org"]', "5 and https://a.org", "List", 1.0),
    ('[5, "https://a.org"]', "https://a.org", "List", 0.5),
    ('["12", "apples"]', "12 apples", "List", 5 / 6),  # "12" is an Integer item: (F1 2/3 + 1) / 2
    ('["40%", 3.5]', "40% of 3.5", "List", 1.0),  # "40%" is a Float item
    ('["Paris", "Rome", "Oslo"]', "Paris", "List", 0.5),  # extra or missing items: recall-like F1
]


@pytest.mark.parametrize("output,expected", PARSE)
def test_parse(output, expected):
    assert parse_answer(output) == expected


@pytest.mark.parametrize("answer,prediction,fmt,expected", CASES)
def test_score(answer, prediction, fmt, expected):
    assert score_answer(answer, prediction, fmt) == pytest.approx(expected, abs=1e-12)


def test_list_answer_as_a_list():
    # MMLongBench's files hold List answers as JSON text (its scorer json.loads them); a real list is
    # accepted too and scores as its JSON text would (the peer's code refuses it: TypeError)
    assert score_answer(["Paris", "Rome"], "Rome, Paris and Berlin", "List") == score_answer(
        '["Paris", "Rome"]', "Rome, Paris and Berlin", "List"
    )


def test_differences_from_legacy():
    # the same outputs under the legacy rules (labels Int/Str): each listed difference shows
    assert rules_legacy.score_output(5, "Answer: 3 or 5", "Int")[1] == 0.0
    assert score_output(5, "Answer: 3 or 5", "Integer")[1] == 1.0
    assert rules_legacy.score_output("Not answerable", "Answer: unanswerable", "None")[1] == 1.0
    assert score_output("Not answerable", "Answer: unanswerable", "None")[1] == 0.0
    assert rules_legacy.score_output(["Paris", "Rome"], "Answer: Rome, Paris and Berlin", "List")[1] == 0.0
    assert rules_legacy.score_output("red fox jumps", "Answer: fox is blue", "Str")[1] == 0.0


@pytest.mark.parametrize(
    "answer,fmt",
    [("3.5", "Integer"), ("many", "Integer"), ("lots", "Float"), ("['a', 'b']", "List"), ("[]", "List"), (7, "String")],
)
def test_unscorable_answers_are_errors(answer, fmt):
    # MMLongBench's code stops on these too (assert / float() / json.loads / empty mean / re on an int)
    with pytest.raises(ValueError):
        score_answer(answer, "x", fmt)


def test_records_labels_and_default_rules():
    rows = [
        {"benchmark": "mmlongbench", "answer": 5, "answer_format": "Int", "prediction": "Answer: 3 or 5"},
        {"benchmark": "mmlongbench", "answer": "red fox", "answer_format": "Str", "prediction": "Answer: red"},
        {"benchmark": "mmlongbench", "answer": '["x", "y"]', "answer_format": "List", "prediction": "Answer: x"},
    ]
    assert default_rules(rows) == "mmlongbench"
    scored = score_records(rows)
    assert [r["score"] for r in scored] == pytest.approx([1.0, 2 / 3, 2 / 3])  # ours labels, MMLongBench rules
    assert [r["extracted"] for r in scored] == ["3 or 5", "red", "x"] and scored[0]["rules"] == "mmlongbench"
    assert default_rules([{"answer": 1}]) == "legacy"
    with pytest.raises(ValueError, match="mix"):
        default_rules([{"benchmark": "mmlongbench"}, {}])
    with pytest.raises(ValueError, match="unknown benchmark"):
        default_rules([{"benchmark": "docvqa"}])
    with pytest.raises(ValueError, match="string-metric"):
        score_records(rows, "mmlongbench", "anls")
    with pytest.raises(ValueError, match="line 2"):
        score_records([rows[0], {**rows[0], "answer": "many"}])


def test_sampling_matches_hf_datasets_shuffle():
    from megatron_vlm.eval.importers import sample_indices

    # Dataset.from_list(range(250)).shuffle(seed=42).select(range(100)) with datasets 3.1.0 (MMLongBench's pin)
    assert sample_indices(250, 100, 42)[:10] == [120, 50, 54, 46, 245, 135, 171, 3, 204, 221]
    assert len(sample_indices(250)) == 100 and len(set(sample_indices(250))) == 100
    assert sorted(sample_indices(30)) == list(range(30))  # fewer lines than samples: all, shuffled
    assert sample_indices(30, 0) == list(range(30))


if __name__ == "__main__":  # the cases as JSON, to run through the peer's code
    print(json.dumps({"parse": PARSE, "cases": CASES}))
