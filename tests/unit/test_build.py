"""build + stats on generated pools: targets hit, policy kept, shards plain WebDataset, deterministic."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from collections import Counter

import pytest

from megatron_vlm.data import mixture, stats
from megatron_vlm.data.build import build
from megatron_vlm.data.recipe import DataRecipe
from megatron_vlm.data.tokens import count_tokens, load_tokenizer
from megatron_vlm.models.family import get_family
from tests.shards_fixtures import (
    one_thread,  # noqa: F401  (autouse fixture)
    write_pool,
    write_records,
)

QWEN = get_family("qwen2_5_vl")

PAGE_TOKENS = 57 * 44  # a US-Letter page at 144 DPI: 1584x1224 -> 1596x1232 -> 57x44 tokens (DESIGN.md)


@pytest.fixture(scope="module")
def big_pool(tmp_path_factory):
    """150 documents of 10-60 US-Letter pages (tiny stored images: build reads sizes from the json)."""
    root = tmp_path_factory.mktemp("pool")
    rng = random.Random(7)
    counts = [rng.randint(10, 60) for _ in range(150)]
    ids = write_pool(root / "pool", counts, image_px=(28, 28))
    write_records(root / "qa", ids, counts)
    return root, counts


def _recipe(tok, **kw):
    r = DataRecipe(tokenizer=str(tok), samples_per_shard=32, **kw)
    r.validate()
    return r


def test_pool_native_hits_targets(big_pool, qwen_tokenizer_dir, tmp_path):
    root, counts = big_pool
    recipe = _recipe(qwen_tokenizer_dir, length_distribution="pool-native", token_budget=30_000_000)
    index = build(root / "pool", root / "qa", recipe, tmp_path / "out", QWEN)
    report = stats.compute(tmp_path / "out")
    print(stats.render_markdown(report))
    assert report["targets_met"], stats.render_markdown(report)
    assert {r["task"]: round(r["target"], 3) for r in report["mixture"]} == {"extract-multi": 0.4, "extract-single": 0.4, "reasoning": 0.2}
    assert all(abs(r["achieved"] - r["target"]) <= 0.01 for r in report["mixture"])
    assert report["totals"]["tokens"] >= 30_000_000 and report["totals"]["tokens"] == index["totals"]["tokens"]
    # Only documents of 32-50 pages, each instance counted as the hand rule says (2508 per page).
    docs_out = [r for r in stats.read_instances(tmp_path / "out", index)]
    assert all(80_000 < r["num_tokens"] <= 131_072 for r in docs_out)
    n_outside = sum(not 32 <= c <= 50 for c in counts) * 3
    assert index["excluded"] == {"outside-pages-range-32-50": n_outside}
    stats.write(report, tmp_path / "report")
    assert (tmp_path / "report" / "lengths.png").stat().st_size > 5000


def test_long_biased_hits_targets(big_pool, qwen_tokenizer_dir, tmp_path):
    root, _ = big_pool
    recipe = _recipe(qwen_tokenizer_dir, length_distribution="long-biased", token_budget=30_000_000)
    build(root / "pool", root / "qa", recipe, tmp_path / "out", QWEN)
    report = stats.compute(tmp_path / "out")
    assert report["targets_met"], stats.render_markdown(report)
    (row,) = report["length"]
    long_share = sum(n >= 100_000 for v in report["lengths_by_task"].values() for n in v) / report["totals"]["samples"]
    assert row["achieved"] == long_share >= 0.839
    assert all(abs(r["achieved"] - r["target"]) <= 0.01 for r in report["mixture"])
    stats.write(report, tmp_path / "out" / "report")


def test_token_counts_and_truncation_on_long_documents(big_pool, qwen_tokenizer_dir, tmp_path):
    root, counts = big_pool
    recipe = _recipe(qwen_tokenizer_dir, length_distribution="custom", length_histogram={"0-131073": 1}, token_budget=3_000_000)
    index = build(root / "pool", root / "qa", recipe, tmp_path / "out", QWEN)
    tok = load_tokenizer(qwen_tokenizer_dir)
    records = {json.loads(line)["id"]: json.loads(line) for line in (root / "qa" / "records-00000.jsonl").read_text().splitlines()}
    import webdataset as wds

    n = 0
    for s in wds.WebDataset([str(tmp_path / "out" / sh["name"]) for sh in index["shards"]], shardshuffle=False):
        meta = json.loads(s["json"])
        rec = records[meta["record_id"]]
        pages = meta["pages"]
        # Exact count by hand: text tokens + 2508 per kept page; within max length.
        text_only = count_tokens(tok, QWEN, rec["question"], rec["answer"], [1] * len(pages)) - len(pages)
        assert meta["num_tokens"] == text_only + PAGE_TOKENS * len(pages) <= 131_072
        # Policy: contiguous, evidence and segment kept, the window as long as fits (one more page would not).
        assert pages == list(range(pages[0], pages[-1] + 1))
        assert set(rec["evidence_pages"]) <= set(pages) and rec["segment"][0] in pages and rec["segment"][1] - 1 in pages
        if len(pages) < counts[int(rec["doc_id"], 16)]:  # write_pool numbers its documents in hex
            assert meta["num_tokens"] + PAGE_TOKENS > 131_072
        assert meta["evidence_pages"] == sorted(rec["evidence_pages"])
        assert sum(k.startswith("i") for k in s) == len(pages) == len(meta["grids"])
        n += 1
    assert n == index["totals"]["samples"]


def test_truncation_policy_by_hand():
    toks = [10] * 20
    count = lambda pages: 5 + sum(toks[p] for p in pages)  # noqa: E731
    rng = random.Random(0)
    assert mixture.truncate_pages(toks, (2, 5), [3], False, count, 1000, rng) == list(range(20))
    # A window of 10 pages (105 tokens) holding pages 12-15 of 20: starts 6..10 (a later start would
    # leave a shorter window at the end), every one is drawn.
    starts = Counter()
    for seed in range(400):
        pages = mixture.truncate_pages(toks, (12, 16), [14], False, count, 105, random.Random(seed))
        assert len(pages) == 10 and pages == list(range(pages[0], pages[0] + 10)) and {12, 13, 14, 15} <= set(pages)
        starts[pages[0]] += 1
    assert sorted(starts) == list(range(6, 11)) and min(starts.values()) > 50
    # Evidence near the end: windows reaching the last page are not shortened (start 10 at most).
    assert {mixture.truncate_pages(toks, (17, 19), [18], False, count, 105, random.Random(s))[0] for s in range(200)} == set(range(9, 11))
    # A question naming pages keeps page 0: tail cut, or dropped when the span is out of reach.
    assert mixture.truncate_pages(toks, (2, 5), [3], True, count, 105, rng) == list(range(10))
    with pytest.raises(mixture.Dropped, match="page-numbered"):
        mixture.truncate_pages(toks, (12, 16), [14], True, count, 65, rng)
    with pytest.raises(mixture.Dropped, match="evidence-span-too-long") as e:
        mixture.truncate_pages(toks, (2, 10), [3], False, count, 60, rng)
    assert e.value.needs_tokens == 85


def _digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.glob("*.tar"))}


@pytest.mark.slow(20)
def test_deterministic_resumable_and_cli(tmp_path, qwen_tokenizer_dir):
    counts = [3, 4, 5, 6, 2, 7]
    ids = write_pool(tmp_path / "pool", counts, page_px=(56, 84))
    write_records(tmp_path / "qa", ids, counts)
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(f"data:\n  tokenizer: {qwen_tokenizer_dir}\n  length_distribution: custom\n  length_histogram: {{'0-5000': 1}}\n"
                           "  token_budget: 20000\n  max_repeats: 40\n  samples_per_shard: 8\n  mixture: {extract-single: 0.5, reasoning: 0.5}\n")
    cmd = [sys.executable, "tools/preprocess_data.py", "build", "--pool", str(tmp_path / "pool"), "--qa", str(tmp_path / "qa"), "--recipe", str(recipe_path)]
    out = subprocess.run(cmd + ["--output", str(tmp_path / "a")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "wrote" in out.stdout and str(tmp_path / "a") in out.stdout
    first = _digest(tmp_path / "a")
    # Same inputs -> byte-identical shards; an interrupted build (index and a shard missing) resumes.
    recipe = DataRecipe.from_yaml(recipe_path)
    build(tmp_path / "pool", tmp_path / "qa", recipe, tmp_path / "b", QWEN)
    assert _digest(tmp_path / "b") == first
    (tmp_path / "a" / "index.json").unlink()
    (tmp_path / "a" / "shard-000001.tar").unlink()
    build(tmp_path / "pool", tmp_path / "qa", recipe, tmp_path / "a", QWEN)
    assert _digest(tmp_path / "a") == first and (tmp_path / "a" / "index.json").is_file()
    # A different recipe into the same directory is refused, not mixed in.
    recipe.seed += 1
    with pytest.raises(ValueError, match="different build"):
        build(tmp_path / "pool", tmp_path / "qa", recipe, tmp_path / "a", QWEN)
    # stats CLI prints the table and where the report went.
    from tools.preprocess_data import main as cli

    assert cli(["stats", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "report" / "report.md").read_text().count("| yes |") >= 3
    # Bad input: one-line reason, non-zero.
    recipe_path.write_text("data:\n  length_distribution: wide\n")
    bad = subprocess.run(cmd + ["--output", str(tmp_path / "c")], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "length_distribution" in bad.stderr


def test_refuses_an_output_over_its_inputs(big_pool, qwen_tokenizer_dir):
    root, _ = big_pool
    recipe = _recipe(qwen_tokenizer_dir)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    for out, why in ((root / "pool" / "shards", "inside the input"), (root / "qa", "it is the input"), (root, "contains the input")):
        with pytest.raises(ValueError, match=why):
            build(root / "pool", root / "qa", recipe, out, QWEN)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
