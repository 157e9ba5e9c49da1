"""Importers: MMLongBench's doc-QA files and the three datasets as published -> eval format;
the MMLongBench prompt for an imported item; contexts beyond 128K built from imported items."""

from __future__ import annotations

import json

import pytest

from megatron_vlm.eval.evalset import read_eval_set
from megatron_vlm.eval.files import read_jsonl
from tests.unit import eval_benchmarks as bench
from tools import evaluate

QUIET = {"log": lambda *_: None}


def test_import_mmlongbench(tmp_path):
    data, images = bench.write_mmlongbench(tmp_path)
    out = tmp_path / "mmlb"
    rc = evaluate.main(
        [
            "import",
            "mmlongbench",
            "--input",
            str(data),
            "--image-root",
            str(images),
            "--output",
            str(out),
            "--samples",
            "2",
        ]
    )
    assert rc == 0
    items = read_jsonl(out / "eval.jsonl")
    # mmlongdoc_K8: 2 of 3 lines, HF datasets' shuffle(seed=42) of 3 rows selects rows [2, 1]; slidevqa_K8: its one line
    assert [it["id"] for it in items] == [
        "mmlongdoc_K8/mmlongdoc_2",
        "mmlongdoc_K8/mmlongdoc_1",
        "slidevqa_K8/slideVQA_0",
    ]
    assert all(it["benchmark"] == "mmlongbench" and it["target_tokens"] == 8192 for it in items)
    assert [it["dataset"] for it in items] == ["mmlongdoc", "mmlongdoc", "slidevqa"]
    listed, counted, slide = items
    assert listed["answer"] == '["The Economist", "TIME"]' and listed["answer_format"] == "List"
    assert counted["answer"] == "5" and counted["answer_format"] == "Integer"
    # the question's document is the page directory named like doc_name; ans_page_list marks its pages
    assert counted["doc_id"] == "4190345" and counted["evidence_pages"] == [2]
    assert [(p["doc_id"], p["page"], p["page_label"], p["evidence"]) for p in counted["pages"]] == [
        ("4190345", 0, "0", False),
        ("4190345", 1, "1", False),
        ("4190345", 2, "2", True),
        ("PH_2016.06.08_Economy-Final", 0, "0", False),
    ]
    assert all(p["tokens"] == bench.PAGE_COST - 2 and p["grid_thw"] == [1, 30, 22] for p in counted["pages"])
    # slides: files numbered from 1, ans_page_list from 0; MMLongBench's prompt label is its own text rule
    assert [p["page"] for p in slide["pages"]] == [0, 1, 2, 3] and slide["evidence_pages"] == [3]
    assert slide["pages"][0]["page_label"].endswith("-1-1024")
    settings = json.loads((out / "eval.json").read_text())
    assert settings["image_root"] == str(images.resolve()) and settings["items"] == 3
    # images stay under the image root: run needs it, and resolves inside it
    with pytest.raises(ValueError, match="--image-root"):
        read_eval_set(out)
    again = read_eval_set(out, image_root=images)
    assert again[1]["pages"][0]["image"] == str(images / counted["pages"][0]["image"])


def test_import_costs_pages_with_the_chosen_family(tmp_path, qwen3_processor_dir):
    """--family qwen3_vl: every page's grid_thw is what HF's Qwen3-VL image processor makes of that
    image, its tokens the grid over merge 2x2; eval.json records the family."""
    from PIL import Image
    from transformers import AutoImageProcessor

    data, images = bench.write_mmlongbench(tmp_path)
    out = tmp_path / "mmlb3"
    assert evaluate.main(["import", "mmlongbench", "--input", str(data), "--image-root", str(images),
                          "--output", str(out), "--family", "qwen3_vl"]) == 0
    assert json.loads((out / "eval.json").read_text())["family"] == "qwen3_vl"
    processor = AutoImageProcessor.from_pretrained(qwen3_processor_dir)
    pages = {p["image"]: p for it in read_jsonl(out / "eval.jsonl") for p in it["pages"]}
    assert len(pages) >= 5
    for relative, page in pages.items():
        grid = processor(images=[Image.open(images / relative).convert("RGB")], return_tensors="pt")["image_grid_thw"]
        assert page["grid_thw"] == grid[0].tolist(), relative
        assert page["tokens"] == int(grid[0].prod()) // 4
    # the default stays Qwen2.5-VL's rule (28 px per token side): other grids for the same images
    default = read_jsonl(_import_default(tmp_path, data, images))
    assert {p["image"]: p["grid_thw"] for it in default for p in it["pages"]} != {k: p["grid_thw"] for k, p in pages.items()}


def _import_default(tmp_path, data, images):
    out = tmp_path / "mmlb-default"
    evaluate.main(["import", "mmlongbench", "--input", str(data), "--image-root", str(images), "--output", str(out)])
    assert json.loads((out / "eval.json").read_text())["family"] == "qwen2_5_vl"
    return out / "eval.jsonl"


def test_import_mmlongbench_refuses_bad_input(tmp_path, capsys):
    data, images = bench.write_mmlongbench(tmp_path)
    bad = tmp_path / "mmlongdoc_K16.jsonl"
    row = json.loads((data / "mmlongdoc_K8.jsonl").read_text().splitlines()[0])
    row["page_list"][0] = "../../outside.jpg"
    bad.write_text(json.dumps(row) + "\n")
    out = tmp_path / "x"
    assert (
        evaluate.main(["import", "mmlongbench", "--input", str(bad), "--image-root", str(images), "--output", str(out)])
        == 2
    )
    missing = tmp_path / "mmlongdoc_K32.jsonl"
    row["page_list"][0] = "documentQA/none.jpg"
    missing.write_text(json.dumps(row) + "\n")
    assert (
        evaluate.main(
            ["import", "mmlongbench", "--input", str(missing), "--image-root", str(images), "--output", str(out)]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "outside" in err[0] and "not found" in err[1]
    assert not out.exists() and not list(tmp_path.glob(".x.tmp*"))


def test_import_published_datasets(tmp_path):
    samples, documents = bench.write_mmlongbench_doc(tmp_path / "mmlbdoc")
    out = tmp_path / "doc"
    assert (
        evaluate.main(
            [
                "import",
                "mmlongbench-doc",
                "--input",
                str(samples),
                "--documents",
                str(documents),
                "--output",
                str(out),
                "--samples",
                "0",
                "--dpi",
                "36",
            ]
        )
        == 0
    )
    items = read_eval_set(out)  # rendered pages live in EVAL_DIR: no image root needed
    assert [it["answer_format"] for it in items] == ["List", "Integer", "None"]
    assert items[0]["answer"] == '["Red", "Blue"]'  # the Python literal became JSON text
    assert [p["evidence"] for p in items[0]["pages"]] == [False, True, False]  # "[2]" is 1-based
    assert items[1]["evidence_pages"] == [0, 1] and items[1]["doc_name"] == "report-b.pdf"
    assert (out / "images" / "report-a" / "report-a_page2.png").is_file()

    jsonl, pngs = bench.write_longdocurl(tmp_path / "ldu")
    out = tmp_path / "ldu-set"
    assert (
        evaluate.main(["import", "longdocurl", "--input", str(jsonl), "--image-root", str(pngs), "--output", str(out)])
        == 0
    )
    first, second = sorted(read_eval_set(out, image_root=pngs), key=lambda it: it["id"])
    assert [p["page"] for p in first["pages"]] == [1, 2, 3] and first["evidence_pages"] == [2]  # page 3 -> _2.png
    assert first["pages"][0]["image"].endswith("4000-4999/4055/4055915_1.png")
    assert second["answer"] == '["Table 4.15", "Figure 4.2"]' and second["answer_format"] == "List"

    jsonl, images = bench.write_slidevqa(tmp_path / "svqa")
    out = tmp_path / "svqa-set"
    assert (
        evaluate.main(["import", "slidevqa", "--input", str(jsonl), "--image-root", str(images), "--output", str(out)])
        == 0
    )
    by_id = {it["id"]: it for it in read_jsonl(out / "eval.jsonl")}
    assert by_id["slidevqa/100"]["answer_format"] == "Integer"  # "42": what MMLongBench's scorer infers
    assert by_id["slidevqa/101"]["answer_format"] == "String"
    assert by_id["slidevqa/101"]["evidence_pages"] == [0, 2]


def test_mmlongbench_prompt_text(tmp_path, qwen_tokenizer_dir):
    """The chat text of an imported item in the mmlongbench mode, written out by hand from MMLongBench's
    doc-QA template (data.py) and Qwen2.5-VL's chat template; also checked against the peer's own
    load_doc_qa + format_chat + apply_chat_template(continue_final_message=True)."""
    from transformers import AutoTokenizer

    from megatron_vlm.eval.prompts import build_prompt, load_chat_template, render

    data, images = bench.write_mmlongbench(tmp_path)
    out = tmp_path / "mmlb"
    evaluate.main(
        [
            "import",
            "mmlongbench",
            "--input",
            str(data / "mmlongdoc_K8.jsonl"),
            "--image-root",
            str(images),
            "--output",
            str(out),
            "--samples",
            "0",
        ]
    )
    item = next(it for it in read_jsonl(out / "eval.jsonl") if it["qa_id"] == "mmlongdoc_1")
    tok = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir))
    text = render(build_prompt(item, "mmlongbench"), tok, load_chat_template(qwen_tokenizer_dir))
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "You are given a document with text and images, and a question. Answer the question as concisely as you "
        "can, using a single phrase or sentence if possible. If the question cannot be answered based on the "
        "information in the article, write 'Not answerable.' Write your answer in the following format:\n"
        "Answer: [answer]\n\n"
        f"Document 4190345 (page 0): {image}\n\nDocument 4190345 (page 1): {image}\n\n"
        f"Document 4190345 (page 2): {image}\n\nDocument PH_2016.06.08_E (page 0): {image}\n\n"
        "Question: Based on Document 4190345, answer the following question. How many judging criteria are there?"
        "<|im_end|>\n<|im_start|>assistant\nAnswer:"
    )
    assert build_prompt(item, "mmlongbench").output(" 5") == "Answer: 5"


def test_contexts_beyond_128k_from_imported_items(tmp_path):
    """build --from-jsonl on imported items: each page belongs to the document its doc_id names, the
    question's document is the anchor, other documents' pages pad the context (MMLongBench's README:
    documents truncated or padded with other documents' pages)."""
    data, images = bench.write_mmlongbench(tmp_path)
    imported = tmp_path / "mmlb"
    evaluate.main(
        [
            "import",
            "mmlongbench",
            "--input",
            str(data / "mmlongdoc_K8.jsonl"),
            "--image-root",
            str(images),
            "--output",
            str(imported),
            "--samples",
            "0",
        ]
    )
    out = tmp_path / "long"
    length = 96 + 7 * bench.PAGE_COST  # 96-token prompt reserve + 7 pages
    rc = evaluate.main(
        [
            "build",
            "--from-jsonl",
            str(imported / "eval.jsonl"),
            "--image-root",
            str(images),
            "--output",
            str(out),
            "--lengths",
            str(length),
            "--depths",
            "1",
        ]
    )
    assert rc == 0
    items = {it["qa_id"]: it for it in read_eval_set(out)}
    assert sorted(items) == ["mmlongdoc_K8/mmlongdoc_0", "mmlongdoc_K8/mmlongdoc_1", "mmlongdoc_K8/mmlongdoc_2"]
    it = items["mmlongdoc_K8/mmlongdoc_1"]
    assert it["benchmark"] == "mmlongbench" and it["dataset"] == "mmlongdoc" and it["doc_name"] == "4190345"
    assert it["context_tokens"] == 7 * bench.PAGE_COST
    docs = [(p["doc_id"], p["page"]) for p in it["pages"]]
    # depth 1: the anchor (the evidence page 2) ends the context, preceded by the document's own
    # pages and then by the other document's (the union of what the imported lines hold of it:
    # pages 0, 1, 3, 4, 5), in page order, a page at a time while it fits: 3 + 4 = 7 pages
    assert docs[-3:] == [("4190345", 0), ("4190345", 1), ("4190345", 2)] and it["pages"][-1]["evidence"]
    assert sorted(docs[:-3]) == [("PH_2016.06.08_Economy-Final", k) for k in (0, 1, 3, 4)]
