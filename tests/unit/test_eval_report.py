"""Reports: per-length/per-task accuracies and base-vs-trained deltas against hand-computed values."""

from __future__ import annotations

import pytest

from megatron_vlm.eval.report import build_report, compare_markdown, compare_reports, report_markdown


def rec(length, task, score, fmt="Int", extracted="1", evidence=1):
    return {
        "target_tokens": length,
        "task": task,
        "score": score,
        "answer_format": fmt,
        "extracted": extracted,
        "evidence_count": evidence,
    }


BASE = [
    rec(32768, "extract-single", 1.0),
    rec(32768, "extract-single", 0.0),
    rec(32768, "reasoning", 0.5, "Str", "x", evidence=3),
    rec(65536, "extract-single", 0.0),
    rec(65536, "reasoning", 0.0, "None", "7", evidence=0),
]
TRAINED = [
    rec(32768, "extract-single", 1.0),
    rec(32768, "extract-single", 1.0),
    rec(32768, "reasoning", 0.5, "Str", "x"),
    rec(65536, "extract-single", 1.0),
    rec(65536, "reasoning", 1.0, "None", "Not answerable"),
]


def test_report_numbers():
    r = build_report(BASE, model="base")
    assert r["overall"]["n"] == 5 and r["overall"]["accuracy"] == pytest.approx(1.5 / 5)
    assert r["by_length"]["32768"]["accuracy"] == pytest.approx(1.5 / 3)
    assert r["by_length"]["65536"]["accuracy"] == 0.0
    assert r["by_task"]["extract-single"]["accuracy"] == pytest.approx(1 / 3)
    assert r["by_length_task"]["32768"]["reasoning"]["accuracy"] == 0.5
    # F1: answerable = 4 (the None one is not), hit 1.5 -> recall .375; answered = 5 -> precision .3
    assert r["overall"]["f1"] == pytest.approx(2 * 0.375 * 0.3 / 0.675)
    md = report_markdown(r)
    assert "| task | 32K | 64K | all |" in md
    assert "| extract-single | 50.0 | 0.0 | 33.3 |" in md
    assert "| **all** | 50.0 | 0.0 | 30.0 |" in md
    # MMLongBench's split: single-page (3 records, 1 hit), cross-page (1, 0.5), unanswerable (1, 0)
    assert r["by_evidence"]["single-page"]["accuracy"] == pytest.approx(1 / 3)
    assert r["by_evidence"]["cross-page"]["accuracy"] == 0.5
    assert r["by_evidence"]["unanswerable"] == {"n": 1, "accuracy": 0.0, "f1": 0.0}
    assert "cross-page 50.0 (n=1)" in md


def test_compare_deltas():
    c = compare_reports(build_report(BASE, "base"), build_report(TRAINED, "trained"))
    assert c["delta"]["overall"] == pytest.approx(4.5 / 5 - 1.5 / 5)
    assert c["delta"]["by_length"]["65536"] == pytest.approx(1.0)
    assert c["delta"]["by_length_task"]["32768"]["extract-single"] == pytest.approx(0.5)
    assert c["delta"]["by_length_task"]["32768"]["reasoning"] == 0.0
    md = compare_markdown(c)
    assert "| 64K | 0.0 | 100.0 | +100.0 |" in md
    assert "| **all** | 30.0 | 90.0 | +60.0 |" in md
    assert "| extract-single | +50.0 | +100.0 |" in md


def test_compare_missing_cells():
    base = build_report([rec(32768, "a", 1.0)])
    trained = build_report([rec(32768, "a", 1.0), rec(65536, "b", 0.0)])
    c = compare_reports(base, trained)
    assert c["delta"]["by_length"]["65536"] is None and c["delta"]["by_task"]["b"] is None
    assert "| b | - | 0.0 | - |" in compare_markdown(c)
