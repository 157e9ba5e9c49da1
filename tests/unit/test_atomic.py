"""utils.atomic: an output appears complete or not at all, is flushed to disk, never overwrites an input."""

import os
from pathlib import Path

import pytest

from megatron_vlm.utils import atomic


def test_content_complete_after_rename_and_no_temp_left(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic.write_json(target, {"b": 1, "a": "é"})
    assert target.read_text(encoding="utf-8") == '{\n  "a": "é",\n  "b": 1\n}\n'
    atomic.write_jsonl(tmp_path / "rows.jsonl", [{"x": 1}, {"x": 2}])
    assert (tmp_path / "rows.jsonl").read_text() == '{"x": 1}\n{"x": 2}\n'
    with atomic.atomic_write(target, "wb") as f:
        f.write(b"replaced")
    assert target.read_bytes() == b"replaced"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out.json", "rows.jsonl", "sub"]


def test_error_removes_the_temp_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_write(target) as f:
            f.write("half of the new")
            assert atomic.temp_path(target).exists()
            raise RuntimeError("killed half way")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(tmp_path / "new.tar") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_directory_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "evalset"
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(target) as scratch:
            (scratch / "a.json").write_text("{}")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    with atomic.atomic_dir(target) as scratch:
        (scratch / "a.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["evalset"] and (target / "a.json").read_text() == "{}"
    with pytest.raises(FileExistsError, match="exists"):
        with atomic.atomic_dir(target):
            pass
    with atomic.atomic_dir(target, replace=True) as scratch:
        (scratch / "b.json").write_text("[]")
    assert [p.name for p in target.iterdir()] == ["b.json"]


def test_refuses_an_input_path(tmp_path):
    pool = tmp_path / "pool"
    (pool / "shards").mkdir(parents=True)
    manifest = pool / "manifest.jsonl"
    manifest.write_text("precious\n")
    with pytest.raises(ValueError, match="it is the input"):
        atomic.write_text(manifest, "x", inputs=[manifest])
    with pytest.raises(ValueError, match="inside the input"):
        atomic.write_text(pool / "shards" / "out.tar", "x", inputs=[pool])
    with pytest.raises(ValueError, match="contains the input"):
        with atomic.atomic_dir(tmp_path, replace=True, inputs=[pool]):
            pass
    assert manifest.read_text() == "precious\n" and not (pool / "shards" / "out.tar").exists()
    atomic.write_text(tmp_path / "pool2" / "x.txt", "ok", inputs=[pool])  # a sibling sharing a prefix is fine


def test_file_and_directory_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    target = tmp_path / "out.txt"
    atomic.write_text(target, "data")
    temp = atomic.temp_path(target)
    assert synced == [str(temp), str(tmp_path)]  # the content before the rename, then the directory entry
    synced.clear()
    with atomic.atomic_dir(tmp_path / "d") as scratch:
        (scratch / "f").write_text("x")
        scratch_path = str(scratch)
    assert synced == [str(Path(scratch_path) / "f"), scratch_path, str(tmp_path)]


def test_stale_temps_finds_what_a_killed_writer_left(tmp_path):
    (tmp_path / "pool-00000-00001.tar").write_text("done")
    leftovers = [atomic.temp_path(tmp_path / "pool-00000-00002.tar"), tmp_path / "pool-00000-00003.tar.tmp.999"]
    for p in leftovers:
        p.write_text("partial")
    (tmp_path / "pool-00001-00000.tar.tmp.5").write_text("another task's")
    assert atomic.stale_temps(tmp_path, "pool-00000-") == sorted(leftovers)
