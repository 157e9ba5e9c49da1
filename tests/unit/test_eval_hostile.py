"""tools/evaluate.py on hostile input (issue 18): nothing written outside the output directory,
images only from inside an explicit root, one-line errors, no output before the input is known good.

Each test failed on main before the fix (shown in the commit that added it).
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tools import evaluate


def _png(path, colour=(200, 200, 200)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (56, 56), colour).save(path)
    return path


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("doc_id", ["../../../escaped", "/ABS/escaped", "sub/dir", "..", ".hidden", "a\x00b"])
def test_build_from_jsonl_refuses_unsafe_doc_ids(tmp_path, capsys, doc_id):
    work = tmp_path / "work"
    _png(work / "bench" / "p0.png")
    _png(work / "bench" / "p1.png", (10, 10, 10))
    if doc_id.startswith("/ABS"):
        doc_id = str(tmp_path / "abs" / "escaped")
    lines = [
        {"id": "q0", "doc_id": doc_id, "question": "?", "answer": "x", "answer_format": "Str", "pages": ["p0.png"]},
        {"id": "q1", "doc_id": "fine", "question": "?", "answer": "y", "answer_format": "Str", "pages": ["p1.png"]},
    ]
    bench = work / "bench" / "bench.jsonl"
    bench.write_text("".join(json.dumps(x) + "\n" for x in lines))
    before = _files(tmp_path)
    out = work / "out" / "evalset"
    rc = evaluate.main(["build", "--from-jsonl", str(bench), "--output", str(out), "--lengths", "200", "--depths", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "doc_id" in err and len(err.strip().splitlines()) == 1
    assert _files(tmp_path) == before  # nothing written anywhere, inside the output or out of it


def _eval_file(tmp_path, image):
    line = {"id": "q", "question": "?", "answer": "x", "answer_format": "Str", "pages": [image]}
    path = tmp_path / "set" / "eval.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(line) + "\n")
    return path


@pytest.mark.parametrize("where", ["absolute", "dotdot", "inner-dotdot"])
def test_run_opens_images_only_inside_the_root(tmp_path, capsys, where):
    secret = _png(tmp_path / "outside" / "secret.png")
    image = {
        "absolute": str(secret),
        "dotdot": "../outside/secret.png",
        "inner-dotdot": "a/../../outside/secret.png",
    }
    eval_file = _eval_file(tmp_path, image[where])
    (eval_file.parent / "a").mkdir()  # so that "a/../../outside" resolves: the path text alone must be refused
    out = tmp_path / "pred.jsonl"
    # nothing listens on port 9: were the image read, the run would go on and record request errors
    rc = evaluate.main(
        [
            "run",
            "--eval-set",
            str(eval_file),
            "--output",
            str(out),
            "--backend",
            "openai",
            "--url",
            "http://127.0.0.1:9/v1",
            "--served-model",
            "m",
            "--retries",
            "0",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "outside" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_run_resolves_images_against_an_explicit_root(tmp_path):
    from megatron_vlm.eval.evalset import read_eval_set

    _png(tmp_path / "images" / "doc" / "doc_page0.png")
    eval_file = _eval_file(tmp_path, "doc/doc_page0.png")
    (item,) = read_eval_set(eval_file, image_root=tmp_path / "images")
    assert item["pages"][0]["image"] == str((tmp_path / "images" / "doc" / "doc_page0.png").resolve())
    assert item["pages"][0]["tokens"] == 4  # 56 x 56 px -> (56/28)^2 with the min-pixels rule: 4 tokens
    with pytest.raises(FileNotFoundError):
        read_eval_set(eval_file)  # the default root is the file's own directory, which has no doc/


def test_compare_refuses_an_empty_predictions_file(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"answer": "1", "answer_format": "Int", "prediction": "Answer: 1"}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    rc = evaluate.main(["compare", "--base", str(empty), "--trained", str(good), "--output", str(tmp_path / "cmp")])
    err = capsys.readouterr().err
    assert rc == 2 and "empty.jsonl" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("bad", ["report-dir-is-a-file", "bad-target-tokens"])
def test_score_writes_nothing_before_failing(tmp_path, capsys, bad):
    row = {"answer": "1", "answer_format": "Int", "prediction": "Answer: 1", "target_tokens": 65536}
    args = []
    if bad == "report-dir-is-a-file":
        (tmp_path / "reports").write_text("a file, not a directory")
        args = ["--report-dir", str(tmp_path / "reports")]
    else:
        row["target_tokens"] = "lots"
    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps(row) + "\n")
    before = _files(tmp_path)
    rc = evaluate.main(["score", "--predictions", str(pred), *args])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert _files(tmp_path) == before


@pytest.mark.parametrize("command", ["score", "compare"])
def test_a_prediction_line_without_its_fields_is_named_by_file_and_line(tmp_path, capsys, command):
    good = {"answer": "1", "answer_format": "Int", "prediction": "Answer: 1"}
    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps(good) + "\n" + json.dumps({"answer": "2"}) + "\n")
    before = _files(tmp_path)
    if command == "score":
        rc = evaluate.main(["score", "--predictions", str(pred)])
    else:
        rc = evaluate.main(["compare", "--base", str(pred), "--trained", str(pred), "--output", str(tmp_path / "cmp")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{pred}:2: lacks answer_format, prediction" in err[0], err
    assert _files(tmp_path) == before
