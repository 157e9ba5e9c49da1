"""Needle test: the page carries the fact, items sit at their grid points, the heatmap grid is right."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from megatron_vlm.data import image_rule
from megatron_vlm.eval.contexts import read_pool
from megatron_vlm.eval.evalset import read_eval_set
from megatron_vlm.eval.needle import accuracy_grid, build_needle_set, plot_heatmap, render_needle_page
from tests.unit.eval_pool import write_pool


def test_needle_page_pixels_and_ink():
    png = render_needle_page("The access code of the Oslo archive is 123456.", dpi=72)
    page = Image.open(io.BytesIO(png)).convert("L")
    assert page.size[::-1] == image_rule.page_pixels(612, 792, 72)  # (h, w) as pymupdf renders it
    ink = np.asarray(page) < 128
    rows = np.nonzero(ink.any(axis=1))[0]
    assert ink.sum() > 200  # text is drawn ...
    assert 792 / 2 - 40 <= rows.min() and rows.max() <= 792 / 2 + 40  # ... only in the middle band


def test_needle_page_float_dpi():
    # regression: pymupdf's get_pixmap raises TypeError on a float dpi (the CLI used to pass 36.0)
    page = Image.open(io.BytesIO(render_needle_page("x", dpi=36.0)))
    assert page.size == (306, 396)
    with pytest.raises(ValueError, match="whole number"):
        render_needle_page("x", dpi=36.5)


def test_needle_text_in_pdf():
    # pymupdf's own text extraction on the page we draw: the fact is there word for word.
    import pymupdf

    doc = pymupdf.open()
    page = doc.new_page(width=612, height=792)
    fact = "The access code of the Quito archive is 654321."
    page.insert_textbox(pymupdf.Rect(72, 356, 540, 436), fact, fontsize=16, fontname="helv", align=1)
    assert " ".join(page.get_text().split()) == fact


def test_needle_set_grid(tmp_path):
    docs = read_pool(write_pool(tmp_path))
    lengths, depths = [1500, 3000], [0.0, 0.5, 1.0]
    summary = build_needle_set(
        docs, tmp_path / "needle", lengths, depths, trials=2, dpi=36, exclude={"doc00"}, log=lambda *_: None
    )
    assert summary["items"] == 12
    items = read_eval_set(tmp_path / "needle")
    assert sorted({(it["target_tokens"], it["depth"]) for it in items}) == [(n, d) for n in lengths for d in depths]
    for it in items:
        (pos,) = [i for i, p in enumerate(it["pages"]) if p["evidence"]]
        assert it["pages"][pos]["doc_id"] == it["doc_id"].split("@")[0]
        assert [p["doc_id"] for p in it["pages"]].count(it["doc_id"]) == 1  # one needle, no other needles
        assert not any(p["doc_id"] == "doc00" for p in it["pages"])
        assert it["num_tokens"] <= it["target_tokens"]
        costs = [p["tokens"] + 2 for p in it["pages"]]
        rest = it["target_tokens"] - it["prompt_tokens"] - costs[pos]
        assert abs(sum(costs[:pos]) - it["depth"] * rest) < 250  # within one page (largest page here ~200)
        assert it["answer_format"] == "Int" and 100000 <= it["answer"] < 1000000


def test_accuracy_grid_and_heatmap(tmp_path):
    scored = [
        {"target_tokens": 1000, "depth": 0.0, "score": 1.0},
        {"target_tokens": 1000, "depth": 0.0, "score": 0.0},
        {"target_tokens": 1000, "depth": 0.5, "score": 1.0},
        {"target_tokens": 2000, "depth": 0.0, "score": 0.0},
    ]
    lengths, depths, acc = accuracy_grid(scored)
    assert lengths == [1000, 2000] and depths == [0.0, 0.5]
    assert acc == [[0.5, 0.0], [1.0, None]]
    path = plot_heatmap(scored, tmp_path / "heat.png", title="test")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
    with pytest.raises(ValueError):
        plot_heatmap([], tmp_path / "empty.png")
