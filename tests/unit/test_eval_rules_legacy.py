"""The legacy rules (``--rules legacy``, megatron_vlm/eval/rules_legacy.py) against hand-worked examples."""

from __future__ import annotations

import pytest

from megatron_vlm.eval.rules_legacy import anls, extract_answer, score_answer, score_output, token_f1
from megatron_vlm.eval.scoring import score_records, summarize


@pytest.mark.parametrize(
    "answer,prediction,expected",
    [
        (12, "12", 1.0),
        ("12", "12.0", 1.0),  # same number
        (12, "12.4", 0.0),  # integers exact: no rounding, no truncation
        (12, "13", 0.0),
        ("1000", "1,000", 1.0),  # thousands comma dropped
        (12, "twelve", 0.0),
        (12, "", 0.0),
    ],
)
def test_int(answer, prediction, expected):
    assert score_answer(answer, prediction, "Int") == expected


@pytest.mark.parametrize(
    "answer,prediction,expected",
    [
        (3.14, "3.14", 1.0),
        (100.0, "100.9", 1.0),  # |0.9| / 100.9 < 1%
        (100.0, "101.5", 0.0),  # 1.5% off
        (0.25, "25", 1.0),  # answer x 100
        ("25%", "0.25", 1.0),  # answer / 100 (the % is cleaned off the answer)
        (0.25, "25%", 1.0),
        (12.5, "$12.5", 1.0),
        (0.25, "2.5", 0.0),  # x10 is not a rule
        (3.14, "abc", 0.0),
    ],
)
def test_float(answer, prediction, expected):
    assert score_answer(answer, prediction, "Float") == expected


def test_float_tolerance_boundary():
    # rel_tol is relative to the larger magnitude (math.isclose): 99 vs 100 is exactly 1%.
    assert score_answer(100.0, "99.0", "Float") == 1.0
    assert score_answer(100.0, "98.9", "Float") == 0.0


@pytest.mark.parametrize(
    "answer,prediction,expected",
    [
        ("https://example.com/a", "https://example.com/a", 1.0),
        ("https://example.com/a", "https://example.com/b", 0.0),  # ANLS would give 0.95; URLs are exact
        ("2021-03-04", "2021-03-04", 1.0),
        ("2021-03-04", "2021-03-05", 0.0),
        ("jane.doe@example.org", "Jane.Doe@example.org", 1.0),  # lower-cased first
        ("jane.doe@example.org", "jane.doe@example.com", 0.0),
        ("9:30 a.m.", "9:30 p.m.", 0.0),
    ],
)
def test_exact_match_strings(answer, prediction, expected):
    assert score_answer(answer, prediction, "Str") == expected


def test_anls_hand_worked():
    # "kitten" -> "sitting": 3 edits over 7 chars -> 1 - 3/7 = 0.5714 > 0.5.
    assert anls("kitten", "sitting") == pytest.approx(4 / 7)
    # "abcd" vs "abxy": 2 edits / 4 = 0.5 -> at the threshold -> 0.
    assert anls("abcd", "abxy") == 0.0
    assert score_answer("Kitten", "sitting", "Str") == pytest.approx(4 / 7)
    # parenthesised parts and quotes are cleaned off: exact after cleaning.
    assert score_answer("Annual Report", "'annual report (2020)'", "Str") == 1.0


def test_token_f1_hand_worked():
    # answer tokens {red, fox, jumps}; prediction {the, red, fox}: common 2, P = 2/3, R = 2/3, F1 = 2/3.
    assert token_f1("red fox jumps", "the red fox") == pytest.approx(2 / 3)
    # common 1 of answer 3 / prediction 1: P = 1, R = 1/3, F1 = 0.5 -> kept (>= 0.5).
    assert token_f1("red fox jumps", "fox") == pytest.approx(0.5)
    # common 1 of 3 / 3: F1 = 1/3 < 0.5 -> 0.
    assert token_f1("red fox jumps", "fox is blue") == 0.0
    assert score_answer("Red fox jumps", "the red fox", "Str", string_metric="f1") == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        score_answer("a", "b", "Str", string_metric="bleu")


@pytest.mark.parametrize(
    "answer,prediction,expected",
    [
        (["Paris", "Rome"], ["rome", "paris"], 1.0),  # order-free, cleaned
        ("['Paris', 'Rome']", '["Rome", "Paris"]', 1.0),  # list literals in strings
        (["Paris", "Rome"], ["Paris"], 0.0),  # length differs
        (["Paris", "Rome"], ["Paris", "Roma"], 0.75),  # min(1, ANLS(rome, roma) = 0.75)
        (["Paris", "Rome"], ["Paris", "Berlin"], 0.0),
        ([1, 2.5], ["2.5", "1"], 1.0),  # numbers compared numerically
        ([1, 2.5], ["2.6", "1"], 0.0),
    ],
)
def test_list(answer, prediction, expected):
    assert score_answer(answer, prediction, "List") == pytest.approx(expected)


def test_not_answerable():
    assert score_answer("Not answerable", "Not answerable", "None") == 1.0
    assert score_answer("Not answerable", "The document does not say; it cannot be answered.", "None") == 1.0
    assert score_answer("Not answerable", "42", "None") == 0.0
    # an answerable question answered "not answerable" scores 0 whatever the format
    assert score_answer(42, "Not answerable", "Int") == 0.0
    assert score_answer("blue", "not answerable", "Str") == 0.0


@pytest.mark.parametrize(
    "output,fmt,expected",
    [
        ("The total is shown on page 3.\nAnswer: 1,204 units", "Int", "1204"),
        ("**Answer:** 12.5%", "Float", "12.5"),
        ("Answer: 3\nAnswer: 4", "Int", "4"),  # the last marker wins
        ("There were 17 breaches in total", "Int", "17"),  # no marker, one line: first number
        ("Thinking...\n\nBlue whale.", "Str", "Blue whale"),  # last non-empty line, trailing period
        ("Answer: ['a', 'b']", "List", ["a", "b"]),
        ("Answer: apples, pears and plums", "List", ["apples", "pears", "plums"]),
        ("Extracted answer: Not answerable", "Str", "Not answerable"),
        ("The pages do not say.\nAnswer: unanswerable", "Int", "Not answerable"),
        ('Answer: "Annual Report"', "Str", "Annual Report"),
        ("Reading page 3.\nThe answer is blue.", "Str", "blue"),  # lead-in phrase dropped
        ("So the final answer is: 42", "Int", "42"),
    ],
)
def test_extract_answer(output, fmt, expected):
    assert extract_answer(output, fmt) == expected


@pytest.mark.parametrize(
    "answer,output,expected",
    [
        ("10:30 a.m.", "Answer: 10:30 a.m.", 1.0),  # verbatim: scored 0 before the fix (period dropped on one side)
        ("10:30 a.m.", "Answer: 10:30 a.m", 1.0),
        ("10:30 a.m.", "Answer: 10:30 p.m.", 0.0),
        ("Blue whale.", "Answer: Blue whale.", 1.0),  # soft strings: ANLS("blue whale.", "blue whale") was 10/11
        ("U.S.", "Answer: U.S.", 1.0),
    ],
)
def test_trailing_period_on_both_sides(answer, output, expected):
    assert score_output(answer, output, "Str")[1] == expected


def test_score_output_and_records():
    assert score_output(0.25, "I computed it.\nAnswer: 25%", "Float") == ("25", 1.0)
    rows = score_records(
        rules="legacy",
        records=[
            {"answer": 3, "answer_format": "Int", "prediction": "Answer: 3"},
            {"answer": "Not answerable", "answer_format": "None", "prediction": "Answer: 7"},
            {"answer": "Not answerable", "answer_format": "None", "prediction": "Not answerable"},
            {"answer": 5, "answer_format": "Int", "prediction": "Not answerable"},
        ]
    )
    assert [r["score"] for r in rows] == [1.0, 0.0, 1.0, 0.0]
    s = summarize(rows)
    # accuracy 2/4; answerable: 2 questions, hit 1 -> recall 1/2; answered (not "Not answerable"): 2 -> precision 1/2.
    assert s == {"n": 4, "accuracy": 0.5, "f1": 0.5}
    with pytest.raises(ValueError, match="lacks prediction"):
        score_records([{"answer": 1, "answer_format": "Int"}], "legacy")
    with pytest.raises(ValueError, match="answer_format"):
        score_answer(1, "1", "Integer")  # the rule module takes its own labels; scoring maps the others
    mapped = score_records([{"answer": 3, "answer_format": "Integer", "prediction": "Answer: 3"}], "legacy")
    assert mapped[0]["score"] == 1.0 and mapped[0]["rules"] == "legacy"
