"""The pool stage end to end on generated PDFs and the bad-input set: manifest rows, tars,
determinism, resumption and sharding."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pymupdf
import pytest

from megatron_vlm.data import pool
from megatron_vlm.data.sample_pdfs import make_bad_inputs, make_corpus

REPO = Path(__file__).resolve().parents[2]


def run_pool(inp, out, *extra) -> int:
    parser = argparse.ArgumentParser()
    pool.add_arguments(parser)
    return pool.main(parser.parse_args(["--input", str(inp), "--output", str(out), "--no-ocr", "--quiet", "--docs-per-tar", "2", *extra]))


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    specs = make_corpus(root, n_docs=4, pages=(2, 3), seed=5)
    bad = make_bad_inputs(root / "bad")
    shutil.copy(specs[1].path, root / "copy-of-doc-001.pdf")
    (root / "notes.txt").write_text("not an input: only *.pdf files in a directory are")
    (root / "broken-link.pdf").symlink_to(root / "no-such-file.pdf")
    return root, specs, bad


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("pool")
    assert run_pool(inputs[0], out) == 0
    return out


def test_manifest_has_one_row_per_input(inputs, built):
    root, specs, bad = inputs
    rows = pool.read_manifest(built)
    assert [r["source"] for r in rows] == sorted(p.relative_to(root).as_posix() for p in root.rglob("*.pdf"))
    assert len(rows) == len(specs) + len(bad) + 2  # + the copy and the broken link
    by_source = {r["source"]: r for r in rows}
    for name, word in bad.items():
        row = by_source[f"bad/{name}"]
        assert row["status"] == "error" and word in row["reason"] and row["shard"] is None
    assert by_source["broken-link.pdf"]["status"] == "error" and by_source["broken-link.pdf"]["reason"].startswith("cannot read: FileNotFoundError")
    assert by_source["broken-link.pdf"]["sha256"] is None
    dup = by_source["doc-001.pdf"]  # "copy-of-doc-001.pdf" sorts first, so it is the one kept
    assert dup["status"] == "duplicate" and dup["duplicate_of"] == "copy-of-doc-001.pdf"
    assert sum(r["status"] == "ok" for r in rows) == len(specs)
    for spec in specs:
        source = "copy-of-doc-001.pdf" if spec.path.name == "doc-001.pdf" else spec.path.name
        row = by_source[source]
        ref = pymupdf.open(spec.path)
        assert row["status"] == "ok" and row["pages"] == ref.page_count
        per_page = 2508 if spec.width_pt == 612 else 2520  # hand-computed in test_pdf.test_token_counts_by_hand
        assert row["tokens"] == per_page * ref.page_count
        assert row["id"] == row["sha256"][:16] and len(row["sha256"]) == 64


def test_tars_are_webdataset_samples(built, inputs):
    import webdataset as wds

    _, specs, _ = inputs
    docs = {doc["id"]: (doc, images) for doc, images in pool.iter_documents(built, images=True)}
    assert len(docs) == len(specs)
    for doc, images in docs.values():
        assert sorted(images) == list(range(doc["num_pages"])) and doc["dpi"] == 144
    urls = sorted(str(p) for p in (built / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert {s["__key__"] for s in samples} == set(docs)
    for s in samples:
        doc = json.loads(s["json"])
        assert all(f"p{i:04d}.png" in s for i in range(doc["num_pages"]))


def test_same_inputs_give_byte_identical_pool(inputs, built, tmp_path):
    assert run_pool(inputs[0], tmp_path / "again", "--workers", "2") == 0
    assert tree(tmp_path / "again") == tree(built)


def test_rerun_skips_done_work_and_redoes_partial(inputs, built, tmp_path, capsys):
    out = tmp_path / "pool"
    shutil.copytree(built, out)
    before = tree(out)
    parts = sorted((out / "parts").glob("*.json"))
    # a run killed after renaming a tar but before its part, and leftovers of a killed write
    parts[0].unlink()
    (out / "shards" / "pool-00000-00000.tar").write_bytes(b"half a tar")
    (out / "shards" / "pool-00000-00001.tar.tmp.999").write_bytes(b"partial")
    capsys.readouterr()
    parser = argparse.ArgumentParser()
    pool.add_arguments(parser)
    args = parser.parse_args(["--input", str(inputs[0]), "--output", str(out), "--no-ocr", "--docs-per-tar", "2"])
    assert pool.main(args) == 0
    unique = sum(r["status"] != "duplicate" and r["sha256"] is not None for r in pool.read_manifest(built))
    assert f"{unique - 2} already done, 1 tars to write" in capsys.readouterr().err  # the chunk of 2 docs is redone
    assert tree(out) == before


def test_sharded_runs_union_to_the_unsharded_run(inputs, built, tmp_path):
    out = tmp_path / "sharded"
    for i in range(3):
        assert not (out / "manifest.jsonl").exists()
        assert run_pool(inputs[0], out, "--num-shards", "3", "--shard-index", str(i)) == 0
    per_shard = [len((out / f"manifest-{i:05d}.jsonl").read_text().splitlines()) for i in range(3)]
    assert all(n > 0 for n in per_shard)  # the split really spreads the inputs

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "shard"} for r in rows]

    assert strip(pool.read_manifest(out)) == strip(pool.read_manifest(built))
    sharded = {d["id"]: d for d, _ in pool.iter_documents(out)}
    whole = {d["id"]: d for d, _ in pool.iter_documents(built)}
    assert sharded == whole


def test_bad_arguments_exit_nonzero_with_one_line(tmp_path, capsys):
    assert run_pool(tmp_path / "missing", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("[pool] error:") and "\n" not in err
    (tmp_path / "empty").mkdir()
    assert run_pool(tmp_path / "empty", tmp_path / "out") == 2
    assert "no inputs" in capsys.readouterr().err
    make_corpus(tmp_path / "in", n_docs=1, pages=(1, 1))
    assert run_pool(tmp_path / "in", tmp_path / "out") == 0
    assert run_pool(tmp_path / "in", tmp_path / "out", "--dpi", "72") == 2
    assert "other settings" in capsys.readouterr().err


def test_a_killed_run_resumes_to_the_same_pool(tmp_path):
    make_corpus(tmp_path / "in", n_docs=6, pages=(2, 3), seed=8, scanned=False)
    fresh = tmp_path / "fresh"
    assert run_pool(tmp_path / "in", fresh, "--docs-per-tar", "1") == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "tools" / "preprocess_data.py"), "pool", "--input", str(tmp_path / "in"), "--output", str(out),
           "--no-ocr", "--quiet", "--docs-per-tar", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and len(list(out.glob("parts/*.json"))) < 2:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.jsonl").exists()  # killed before the end: nothing claims to be complete
    assert run_pool(tmp_path / "in", out, "--docs-per-tar", "1") == 0
    assert tree(out) == tree(fresh)


def test_a_document_in_two_shards_is_rendered_and_read_once(tmp_path):
    """Only the task holding a content's first source renders it; manifest.jsonl keeps that source
    and every reader (iter_documents, the build) reads that copy."""
    from megatron_vlm.data.build import read_pool

    make_corpus(tmp_path / "in", n_docs=2, pages=(1, 1), seed=3, scanned=False)
    other = next(f"copy-{k}.pdf" for k in range(100) if pool.shard_of(f"copy-{k}.pdf", 2) != pool.shard_of("doc-000.pdf", 2))
    shutil.copy(tmp_path / "in" / "doc-000.pdf", tmp_path / "in" / other)
    out = tmp_path / "pool"
    for i in range(2):
        assert run_pool(tmp_path / "in", out, "--num-shards", "2", "--shard-index", str(i)) == 0
    rows = {r["source"]: r for r in pool.read_manifest(out)}
    kept, copy = rows[min(other, "doc-000.pdf")], rows[max(other, "doc-000.pdf")]
    assert kept["status"] == "ok" and copy["status"] == "duplicate" and copy["duplicate_of"] == kept["source"]
    holders = [f"shards/{t.name}" for t in sorted((out / "shards").glob("*.tar")) if f"{kept['id']}.json" in tarfile.open(t).getnames()]
    assert holders == [kept["shard"]]
    task_rows = [json.loads(line) for i in range(2) for line in (out / f"manifest-{i:05d}.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in task_rows if r["sha256"] == kept["sha256"]) == ["duplicate", "ok"]  # the tasks agreed
    docs = [doc["id"] for doc, _ in pool.iter_documents(out, images=True)]
    assert sorted(docs) == sorted({r["id"] for r in rows.values() if r["status"] == "ok"}) and docs.count(kept["id"]) == 1
    _, images = read_pool(out)
    assert {path for (doc_id, _), (path, *_rest) in images.items() if doc_id == kept["id"]} == {str(out / kept["shard"])}
