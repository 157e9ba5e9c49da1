"""pool on hostile inputs: links to a FIFO and to /dev/zero, a FIFO, a directory and a text file
named .pdf, a file name that is not UTF-8. Each becomes its own row; the run never hangs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_vlm.data.pdf import PdfError, check_bytes
from megatron_vlm.data.sample_pdfs import make_corpus

REPO = Path(__file__).resolve().parents[2]


def _rows(out: Path) -> dict[str, dict]:
    return {r["source"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="needs mkfifo and /dev/zero")
def test_only_regular_files_are_read_and_odd_names_are_kept(tmp_path):
    inp = tmp_path / "in"
    make_corpus(inp, n_docs=1, pages=(1, 1), seed=2, scanned=False)
    os.mkfifo(inp / "fifo.pdf")
    os.mkfifo(tmp_path / "elsewhere-fifo")
    (inp / "to-fifo.pdf").symlink_to(tmp_path / "elsewhere-fifo")
    (inp / "to-zero.pdf").symlink_to("/dev/zero")
    (inp / "folder.pdf").mkdir()
    (inp / "notes.pdf").write_text("%PDF-1.7 is the version this reader supports.\nNothing else here.\n")
    odd = os.fsencode(inp) + b"/caf\xe9-report.pdf"  # Latin-1 bytes: not UTF-8
    with open(odd, "wb") as f:
        f.write((inp / "doc-000.pdf").read_bytes() + b"\n% a different copy\n")
    cmd = [sys.executable, str(REPO / "tools" / "preprocess_data.py"), "pool", "--input", str(inp),
           "--output", str(tmp_path / "pool"), "--no-ocr", "--layout", "rules", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)  # a hang fails here
    assert proc.returncode == 0, proc.stderr
    rows = _rows(tmp_path / "pool")
    for name, kind in [("fifo.pdf", "a FIFO"), ("to-fifo.pdf", "a FIFO"), ("to-zero.pdf", "a character device")]:
        assert rows[name]["status"] == "error" and rows[name]["reason"] == f"not a regular file: {kind}", rows[name]
    assert "folder.pdf" not in rows  # a directory is searched, not read
    assert rows["notes.pdf"]["status"] == "error" and rows["notes.pdf"]["reason"].startswith("not a PDF"), rows["notes.pdf"]
    assert rows["caf\\xe9-report.pdf"]["status"] == "ok"  # the row names the file; the bytes it could not decode as \xNN
    assert rows["doc-000.pdf"]["status"] == "ok" and len(rows) == 6  # the run went on past every odd input


def test_text_named_pdf_is_not_a_pdf_and_a_cut_pdf_is_truncated(tmp_path):
    specs = make_corpus(tmp_path, n_docs=1, pages=(2, 2), seed=1, scanned=False)
    data = specs[0].path.read_bytes()
    for text, reason in [
        (b"Meeting notes\nnothing to see\n", "not a PDF: no %PDF- header"),
        (b"%PDF-1.4 is the header every PDF file starts with.\n", "not a PDF: a %PDF- header but no PDF objects"),
        (b"\xef\xbb\xbf%PDF-1.7 notes saved as UTF-8 with a BOM\n", "not a PDF: a %PDF- header but no PDF objects"),
        (data[: len(data) // 2], "truncated"),
    ]:
        with pytest.raises(PdfError, match=reason):
            check_bytes(text)


def test_a_manifest_row_cannot_point_outside_the_pool(tmp_path):
    import io
    import tarfile

    from megatron_vlm.data import pool_format

    outside = tmp_path / "elsewhere.tar"  # a readable tar holding a document, outside the pool
    with tarfile.open(outside, "w") as tar:
        body = json.dumps({"id": "0123456789abcdef", "num_pages": 0, "pages": []}).encode()
        info = tarfile.TarInfo("0123456789abcdef.json")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    pool = tmp_path / "pool"
    pool.mkdir()
    for shard in ["../elsewhere.tar", str(outside)]:
        row = {"id": "0123456789abcdef", "source": "a.pdf", "sha256": "0123456789abcdef" * 4, "status": "ok", "reason": None,
               "pages": 0, "tokens": 0, "shard": shard, "duplicate_of": None}
        (pool / "manifest.jsonl").write_text(json.dumps(row) + "\n")
        with pytest.raises(ValueError, match="outside"):
            list(pool_format.documents(pool))


@pytest.mark.parametrize("row, message", [
    ('{"id": "0123456789abcdef", "status": "ok"', "Expecting ',' delimiter"),  # a line cut short
    ('["not", "a", "row"]', "not a manifest row"),
    ('{"id": "../../escaped", "status": "ok", "shard": "shards/pool-00000-00000.tar"}', "id '../../escaped' is not a safe file name"),
])
def test_a_bad_manifest_row_is_named_by_file_and_line(tmp_path, capsys, row, message):
    """synth (and every reader of the pool) refuses a manifest row it cannot trust, by file and line, before writing."""
    from tools.preprocess_data import main as cli

    pool = tmp_path / "pool"
    pool.mkdir()
    good = {"id": "0123456789abcdef", "source": "a.pdf", "status": "error", "reason": "not a PDF", "shard": None}
    (pool / "manifest.jsonl").write_text(json.dumps(good) + "\n" + row + "\n")
    rc = cli(["synth", "--pool", str(pool), "--output", str(tmp_path / "qa"), "--teacher", "template"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{pool / 'manifest.jsonl'}:2: {message}" in err[0], err
    assert not (tmp_path / "qa").exists()
