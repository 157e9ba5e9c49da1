"""Shared pytest setup: reference-file locations and the GPU skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared/reference beside the checkout (read from there, never copied into the repo).
REFERENCE = Path(os.environ.get("MEGATRON_VLM_REFERENCE", REPO.parent / "shared" / "reference"))

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite computes on the CPU (gloo) even on a machine with a GPU: megatron_vlm.parallel reads this
# wherever it would otherwise pick CUDA. Tests under tests/gpu ask for "cuda" explicitly.
os.environ.setdefault("MEGATRON_VLM_DEVICE", "cpu")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """../shared/reference; tests that need it skip with the reason when it is missing."""
    if not REFERENCE.is_dir():
        pytest.skip(f"reference files not found at {REFERENCE} (set MEGATRON_VLM_REFERENCE)")
    return REFERENCE


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(reference_dir: Path) -> Path:
    path = reference_dir / "qwen2_5_vl_tokenizer"
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"Qwen2.5-VL tokenizer not found at {path}")
    return path


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir(reference_dir: Path, tmp_path_factory) -> Path:
    """The Qwen3-VL tokenizer, built once per session from the reference files (models/qwen3_vl/tokenizer.py)."""
    from megatron_vlm.models.qwen3_vl.tokenizer import CONFIG_DIR, VOCAB_DIR, build_tokenizer

    for folder, name in ((VOCAB_DIR, "vocab.json"), (VOCAB_DIR, "merges.txt"), (CONFIG_DIR, "tokenizer_config.json")):
        if not (reference_dir / folder / name).is_file():
            pytest.skip(f"Qwen3-VL tokenizer pieces not found: {reference_dir / folder / name}")
    return build_tokenizer(reference_dir, tmp_path_factory.mktemp("qwen3") / "tokenizer")


@pytest.fixture(scope="session")
def qwen3_processor_dir(reference_dir: Path, qwen3_tokenizer_dir: Path, tmp_path_factory) -> Path:
    """A directory AutoProcessor loads as Qwen3-VL's: the built tokenizer plus the reference
    image/video preprocessor configs and 8B chat template (copied into a temporary directory)."""
    import shutil

    out = tmp_path_factory.mktemp("qwen3") / "processor"
    shutil.copytree(qwen3_tokenizer_dir, out)
    for name in ("preprocessor_config.json", "video_preprocessor_config.json", "chat_template.json"):
        shutil.copyfile(reference_dir / "qwen3_vl" / name, out / name)
    return out


@pytest.fixture(scope="session")
def qwen3_hf_rope():
    """HF's Qwen3-VL ``get_rope_index`` as ``(input_ids [L], mm_token_type_ids [L], image grids, video
    grids) -> (position ids [3, L], delta)``, from a tiny ``Qwen3VLModel`` (it reads only its config)."""
    from transformers import Qwen3VLConfig, Qwen3VLModel

    from megatron_vlm.models.qwen3_vl.family import FAMILY

    config = Qwen3VLConfig(
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 16,
                       "patch_size": FAMILY.image.patch_size, "spatial_merge_size": FAMILY.image.merge_size,
                       "temporal_patch_size": FAMILY.image.temporal_patch_size, "num_position_embeddings": 16,
                       "deepstack_visual_indexes": []},
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "head_dim": 8, "vocab_size": 151936,
                     "rope_scaling": {"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True}},
        image_token_id=FAMILY.tokens.image_pad, video_token_id=FAMILY.tokens.video_pad,
        vision_start_token_id=FAMILY.tokens.vision_start, vision_end_token_id=FAMILY.tokens.vision_end,
    )
    model = Qwen3VLModel(config).eval()

    def rope_index(input_ids, mm_token_type_ids, image_grid_thw=None, video_grid_thw=None):
        ids, delta = model.get_rope_index(input_ids.reshape(1, -1), mm_token_type_ids.reshape(1, -1),
                                          image_grid_thw, video_grid_thw)
        return ids[:, 0], int(delta.reshape(-1)[0])

    return rope_index


def _expected_seconds(item) -> float:
    """`@pytest.mark.slow(SECONDS)` (about how long on 2 idle cores; plain `slow` is 30), else 0."""
    mark = item.get_closest_marker("slow")
    if mark is None:
        return 0.0
    return float(mark.args[0]) if mark.args else 30.0


def _module_fixture_user(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and any(defs and defs[-1].scope == "module" for defs in info.name2fixturedefs.values())


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    import torch

    # Longest first, so that with pytest-xdist (tests/run.sh runs two workers) a long test never
    # starts last and leaves one core idle; the order within equal estimates is pytest's own.
    items.sort(key=lambda item: -_expected_seconds(item))
    # The tests of a module that share a module-scoped fixture (often a multi-process run) go to one
    # worker, one after the other (tests/run.sh: --dist loadgroup): handed out one by one, each
    # worker would build the fixture, and build it again each time another module's test came between.
    for item in items:
        if _module_fixture_user(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    gpu_dir = REPO / "tests" / "gpu"
    for item in items:
        # The marker or the folder, never a keyword match: a checkout under a directory named
        # "gpu" puts that name in every test's keywords.
        if item.get_closest_marker("gpu") is not None or gpu_dir in Path(str(item.fspath)).parents:
            item.add_marker(skip)
