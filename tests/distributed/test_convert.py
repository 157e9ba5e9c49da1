"""Checkpoint conversion HF <-> Megatron: exact round trips through a TP=2 x PP=2 model, refusals,
atomic outputs, exports that transformers loads with the same logits.

Conversions run in spawned processes (they start a torch.distributed group of their own).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.dist_utils import REPO, run_distributed, run_tool

TOKEN = {"image": 151655, "vision_start": 151652, "vision_end": 151653}


# ---------------------------------------------------------------- tiny HF checkpoints


def _tiny_hf_config(tied: bool):
    from transformers import Qwen2_5_VLConfig

    text = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=96, vocab_size=151936, tie_word_embeddings=tied, max_position_embeddings=4096,
                rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, rope_theta=1e6)
    vision = dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=48, out_hidden_size=64,
                  fullatt_block_indexes=[1], window_size=56)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tied,
                            image_token_id=TOKEN["image"], vision_start_token_id=TOKEN["vision_start"],
                            vision_end_token_id=TOKEN["vision_end"])


def make_hf_dir(path: Path, tied: bool, layout: str, reference: Path) -> Path:
    """A random bf16 tiny Qwen2.5-VL saved by transformers, re-sharded into several files and
    renamed to the requested naming layout, with the real tokenizer/processor files beside it."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from megatron_vlm.checkpoint.hf_io import HFReader, ShardedSafetensorsWriter, copy_processor_files

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(_tiny_hf_config(tied)).to(torch.bfloat16)
    saved = path.parent / (path.name + "-saved")
    model.save_pretrained(saved)
    reader = HFReader(saved)
    path.mkdir(parents=True)
    writer = ShardedSafetensorsWriter(path, max_shard_bytes=8 * 1024**2)
    for name in reader.names():
        new = name
        if layout == "new":
            if name.startswith("visual."):
                new = "model.visual." + name[len("visual."):]
            elif name.startswith("model."):
                new = "model.language_model." + name[len("model."):]
        writer.add(new, reader.get(name))
    writer.close()
    (path / "config.json").write_text((saved / "config.json").read_text())
    copy_processor_files(saved, path)  # generation_config.json
    copy_processor_files(reference / "qwen2_5_vl_tokenizer", path)
    copy_processor_files(reference / "hf_configs" / "Qwen2.5-VL-7B-Instruct", path)
    return path


def make_qwen3_hf_dir(path: Path, tied: bool, processor_dir: Path) -> Path:
    """A random bf16 tiny Qwen3-VL saved by transformers (its own, new naming layout), with the built
    Qwen3-VL tokenizer and the published processor files beside it. Two DeepStack taps, so that at
    PP=2 (2 + 2 LLM layers) the layers they feed are on the first stage."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from megatron_vlm.checkpoint.hf_io import copy_processor_files
    from megatron_vlm.models.qwen3_vl.config import flavor, to_hf_config

    cfg = flavor("debug").replace(text=dict(tie_word_embeddings=tied, max_position_embeddings=4096),
                                  vision=dict(deepstack_visual_indexes=[0, 2]))
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**to_hf_config(cfg))).to(torch.bfloat16)
    with torch.no_grad():  # HF's init leaves norms at 1 and biases at 0: make every tensor distinct
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path, max_shard_size="8MB")
    copy_processor_files(processor_dir, path)
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    """tools/convert_checkpoint.py as a user runs it: a new interpreter (imports ~10 s of CPU)."""
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "tools/convert_checkpoint.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def _convert(*args: str) -> subprocess.CompletedProcess:
    """Like _cli (same arguments, exit status and stderr), the CLI's main() in a fork-server rank."""
    code, out, err = run_tool("tools/convert_checkpoint.py", list(args))[0]
    return subprocess.CompletedProcess(["convert_checkpoint.py", *args], code, out, err)


def _assert_bit_identical(a_dir: Path, b_dir: Path) -> None:
    from megatron_vlm.checkpoint.hf_io import HFReader

    a, b = HFReader(a_dir), HFReader(b_dir)
    assert a.names() == b.names()
    for name in a.names():
        x, y = a.get(name), b.get(name)
        assert x.dtype == y.dtype, name
        assert torch.equal(x.view(torch.uint8), y.view(torch.uint8)), name


# ---------------------------------------------------------------- rank functions


def _reshard_and_save(src: str, dst: str, hf_dir: str, tp: int, pp: int) -> None:
    """Load a dist checkpoint into our model at tp x pp, then save it the way the trainer does."""
    from megatron.core import dist_checkpointing

    from megatron_vlm.checkpoint.hf_io import read_config
    from megatron_vlm.models.family import family_of_hf_config
    from megatron_vlm.parallel import ParallelLayout, destroy, initialize
    from megatron_vlm.training.providers import PROVIDERS

    initialize(ParallelLayout(tp=tp, pp=pp))
    family = family_of_hf_config(read_config(Path(hf_dir)))
    model = PROVIDERS[family.name].model_class()(family.from_hf_config(hf_dir), params_dtype=torch.bfloat16, bf16=True,
                                                 pipeline_dtype=torch.bfloat16)
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, src)
    model.load_state_dict(loaded["model"])
    dist_checkpointing.save({"model": model.sharded_state_dict()}, dst)
    destroy()


def _random_model_logits_and_save(hf_dir: str, dst: str, batch: dict) -> torch.Tensor:
    """A randomly initialised fp32 model at TP=2: its logits on ``batch``, and a trainer-style save."""
    from megatron.core import dist_checkpointing

    from megatron_vlm.models.qwen2_5_vl.config import from_hf_config
    from megatron_vlm.models.qwen2_5_vl.model import Qwen2_5_VLModel
    from megatron_vlm.parallel import ParallelLayout, destroy, initialize

    initialize(ParallelLayout(tp=2), seed=7)
    model = Qwen2_5_VLModel(from_hf_config(hf_dir)).eval()
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["position_ids"], pixel_values=batch["pixel_values"],
                       image_grid_thw=batch["image_grid_thw"])
    dist_checkpointing.save({"model": model.sharded_state_dict()}, dst)
    destroy()
    return logits


def _refusals(hf_dir: str, tmp: str) -> dict:
    """Run every refusal in one process; return {case: (message, whether anything was written)}."""
    from megatron_vlm.checkpoint import convert
    from megatron_vlm.checkpoint.hf_io import ConversionError, HFReader, ShardedSafetensorsWriter
    from megatron_vlm.checkpoint.safe_load import CheckpointError

    tmp = Path(tmp)
    results = {}

    def attempt(case: str, fn) -> None:
        out = tmp / f"out-{case}"
        try:
            fn(out)
            results[case] = (None, out.exists())
        except (ConversionError, CheckpointError) as exc:
            leftovers = [p.name for p in tmp.iterdir() if p.name.startswith((f"out-{case}", f".out-{case}"))]
            results[case] = (str(exc), bool(leftovers))

    def variant(name: str, edit_config=None, drop=None, add=None, replace=None) -> Path:
        """A copy of the HF dir with one thing wrong."""
        d = tmp / name
        d.mkdir()
        cfg = json.loads((Path(hf_dir) / "config.json").read_text())
        if edit_config:
            edit_config(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
        reader = HFReader(hf_dir)
        writer = ShardedSafetensorsWriter(d)
        for n in reader.names():
            if n == drop:
                continue
            t = reader.get(n)
            writer.add(n, torch.zeros(replace[1], dtype=t.dtype) if replace and n == replace[0] else t)
        if add:
            writer.add(add, torch.zeros(3))
        writer.close()
        return d

    names = HFReader(hf_dir).names()
    q = next(n for n in names if n.endswith("layers.1.self_attn.q_proj.weight"))
    attempt("model-type", lambda o: convert.hf_to_mcore(
        variant("v1", edit_config=lambda c: c.update(model_type="llava")), o))
    attempt("missing", lambda o: convert.hf_to_mcore(variant("v2", drop=q), o))
    attempt("unexpected", lambda o: convert.hf_to_mcore(variant("v3", add="model.extra.weight"), o))
    attempt("shape", lambda o: convert.hf_to_mcore(variant("v4", replace=(q, (8, 64))), o))
    attempt("layout", lambda o: convert.hf_to_mcore(hf_dir, o, tp=3))

    # A conversion that dies half way (here: while writing) leaves nothing that looks complete.
    import megatron.core.dist_checkpointing as dc

    real_save = dc.save

    def dying_save(sharded, path, *a, **k):
        (Path(path) / "half-written").write_text("x")
        raise ConversionError("killed while writing")

    dc.save = dying_save
    try:
        attempt("killed", lambda o: convert.hf_to_mcore(hf_dir, o))
    finally:
        dc.save = real_save
    # Export refusals: a checkpoint that is not one, and a template of another shape.
    attempt("not-a-checkpoint", lambda o: convert.mcore_to_hf(tmp / "v1", o))
    good = tmp / "good"
    convert.hf_to_mcore(hf_dir, good)
    wrong = variant("v5", edit_config=lambda c: c.update(
        num_hidden_layers=6, text_config={**c.get("text_config", {}), "num_hidden_layers": 6}))
    attempt("template-mismatch", lambda o: convert.mcore_to_hf(good, o, hf_template=wrong))

    # Damaged inputs: a missing or truncated .distcp, a truncated safetensors shard.
    import shutil

    def damaged_checkpoint(name: str, damage) -> Path:
        d = tmp / name
        shutil.copytree(good, d)
        damage(max(d.glob("*.distcp"), key=lambda p: p.stat().st_size))
        return d

    attempt("missing-distcp", lambda o: convert.mcore_to_hf(damaged_checkpoint("c1", Path.unlink), o))
    attempt("truncated-distcp", lambda o: convert.mcore_to_hf(damaged_checkpoint(
        "c2", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])), o))
    cut = tmp / "v6"
    shutil.copytree(hf_dir, cut)
    shard = sorted(cut.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    attempt("truncated-safetensors", lambda o: convert.hf_to_mcore(cut, o))

    # --overwrite never removes an input: outputs that are, lie inside or contain one are refused.
    def overlap(case: str, fn, inputs: list[Path]) -> None:
        before = {p: sorted(q.name for q in p.iterdir()) for p in inputs}
        try:
            fn()
            message = None
        except ConversionError as exc:
            message = str(exc)
        results[case] = (message, any(not p.is_dir() or sorted(q.name for q in p.iterdir()) != before[p] for p in inputs))

    overlap("export-over-input", lambda: convert.mcore_to_hf(good, good, overwrite=True), [good])
    overlap("export-inside-input", lambda: convert.mcore_to_hf(good, good / "hf", overwrite=True), [good])
    overlap("export-over-parent", lambda: convert.mcore_to_hf(good, tmp, overwrite=True), [good])
    overlap("export-over-template", lambda: convert.mcore_to_hf(good, tmp / "v5", hf_template=tmp / "v5", overwrite=True),
            [tmp / "v5"])
    overlap("import-over-input", lambda: convert.hf_to_mcore(hf_dir, hf_dir, overwrite=True), [Path(hf_dir)])
    return results


# ---------------------------------------------------------------- tests


def _round_trip_tp2_pp2(tmp_path: Path, hf: Path, *export_args: str, fresh_interpreter: bool = False) -> tuple[Path, Path]:
    """HF -> Megatron (the CLI, --tp 2 --pp 2; in a new interpreter as a user runs it, or its main()
    in a fork-server rank) -> loaded and resaved by a TP=2 x PP=2 model -> HF; asserts the export is
    the source bit for bit. Returns (the converted checkpoint, the export)."""
    mc = tmp_path / "mcore"
    r = (_cli if fresh_interpreter else _convert)("hf-to-mcore", "--hf", str(hf), "--output", str(mc), "--tp", "2", "--pp", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    resaved = tmp_path / "mcore-tp2pp2"
    resaved.mkdir()
    run_distributed(_reshard_and_save, 4, str(mc), str(resaved), str(hf), 2, 2, timeout_s=400)
    out = tmp_path / "hf-out"
    r = _convert("mcore-to-hf", "--mcore", str(resaved), "--output", str(out), "--hf-template", str(hf), *export_args)
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_bit_identical(hf, out)
    return mc, out


@pytest.mark.slow(60)
@pytest.mark.parametrize("tied,layout", [(True, "new"), (False, "old")], ids=["tied-new", "untied-old"])
def test_round_trip_through_tp2_pp2_is_bit_identical(tmp_path, reference_dir, tied, layout):
    hf = make_hf_dir(tmp_path / "hf", tied, layout, reference_dir)
    _, out = _round_trip_tp2_pp2(tmp_path, hf, "--layout", layout, fresh_interpreter=tied)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl" and config["tie_word_embeddings"] == tied
    for name in ("tokenizer.json", "chat_template.json", "preprocessor_config.json", "generation_config.json"):
        assert (out / name).is_file(), name


@pytest.mark.slow(60)
def test_qwen3_round_trip_through_tp2_pp2_is_bit_identical_and_exports_equal_logits(tmp_path, qwen3_processor_dir):
    """Qwen3-VL: HF -> Megatron -> TP=2 x PP=2 resave -> HF gives every tensor bit for bit; the export
    loads in transformers with AutoProcessor and gives the source's logits exactly (float32 export)."""
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    hf = make_qwen3_hf_dir(tmp_path / "hf", tied=True, processor_dir=qwen3_processor_dir)
    mc, out = _round_trip_tp2_pp2(tmp_path, hf)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl" and config["tie_word_embeddings"]
    assert config["text_config"]["rope_scaling"]["mrope_interleaved"]

    f32 = tmp_path / "hf-out-f32"
    assert _convert("mcore-to-hf", "--mcore", str(mc), "--output", str(f32), "--dtype", "float32").returncode == 0
    processor = AutoProcessor.from_pretrained(f32)
    inputs = _multi_image_inputs(processor, sizes=((96, 160), (128, 64)))
    assert int((inputs["input_ids"] == TOKEN["image"]).sum()) > 0 and inputs["image_grid_thw"].shape[0] == 2
    src = Qwen3VLForConditionalGeneration.from_pretrained(hf, dtype=torch.float32).eval()
    exp = Qwen3VLForConditionalGeneration.from_pretrained(f32).eval()
    assert exp.dtype == torch.float32
    with torch.no_grad():
        a, b = src(**inputs).logits, exp(**inputs).logits
    torch.testing.assert_close(b, a, rtol=0, atol=0)


def _multi_image_inputs(processor, sizes=((84, 140), (112, 56))):
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    images = [Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy()) for h, w in sizes]
    content = [{"type": "image"}, {"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "text", "text": "now."}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor(text=[text], images=images, return_tensors="pt")


def _processor(hf_dir: Path):
    try:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(hf_dir)
    except ImportError as exc:  # transformers' video processor needs torchvision
        pytest.skip(f"AutoProcessor for Qwen2.5-VL cannot load here: {exc}")


@pytest.mark.slow(35)
def test_export_loads_in_transformers_with_equal_logits(tmp_path, reference_dir):
    from transformers import Qwen2_5_VLForConditionalGeneration

    hf = make_hf_dir(tmp_path / "hf", tied=False, layout="old", reference=reference_dir)
    mc, out = tmp_path / "mcore", tmp_path / "hf-out"
    assert _convert("hf-to-mcore", "--hf", str(hf), "--output", str(mc)).returncode == 0
    r = _convert("mcore-to-hf", "--mcore", str(mc), "--output", str(out), "--dtype", "float32")
    assert r.returncode == 0, r.stderr[-2000:]
    processor = _processor(out)
    inputs = _multi_image_inputs(processor)
    assert int((inputs["input_ids"] == TOKEN["image"]).sum()) > 0 and inputs["image_grid_thw"].shape[0] == 2
    src = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf, torch_dtype=torch.float32).eval()
    exp = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).eval()
    assert exp.dtype == torch.float32
    with torch.no_grad():
        a, b = src(**inputs).logits, exp(**inputs).logits
    torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.slow(25)
def test_trainer_style_tp2_checkpoint_exports_with_equal_logits(tmp_path, reference_dir):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from megatron_vlm.models.qwen2_5_vl.position_ids import mrope_position_ids

    hf = make_hf_dir(tmp_path / "hf", tied=True, layout="new", reference=reference_dir)
    processor = _processor(hf)
    inputs = _multi_image_inputs(processor)
    pos, _ = mrope_position_ids(inputs["input_ids"][0], inputs["image_grid_thw"])
    batch = {"input_ids": inputs["input_ids"], "position_ids": pos.unsqueeze(1),
             "pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"]}
    ckpt = tmp_path / "iter_0000010"
    ckpt.mkdir()
    logits = run_distributed(_random_model_logits_and_save, 2, str(hf), str(ckpt), batch, timeout_s=300)[0]
    out = tmp_path / "hf-out"
    r = _convert("mcore-to-hf", "--mcore", str(ckpt), "--output", str(out), "--hf-template", str(hf))
    assert r.returncode == 0, r.stderr[-2000:]
    exp = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        ref = exp(**inputs).logits
    # Two fp32 implementations of the same network (different kernels and summation order).
    torch.testing.assert_close(logits.float(), ref, rtol=1e-4, atol=1e-4)


def test_refusals_name_the_problem_and_write_nothing(tmp_path, reference_dir):
    hf = make_hf_dir(tmp_path / "hf", tied=False, layout="old", reference=reference_dir)
    work = tmp_path / "work"
    work.mkdir()
    results = run_distributed(_refusals, 1, str(hf), str(work), timeout_s=300)[0]
    expected = {
        "model-type": "model_type is 'llava'",
        "missing": "missing tensors: model.layers.1.self_attn.q_proj.weight",
        "unexpected": "unexpected tensors: model.extra.weight",
        "shape": "shape mismatch: model.layers.1.self_attn.q_proj.weight (8, 64)",
        "layout": "not divisible by tp=3",
        "killed": "killed while writing",
        "not-a-checkpoint": "not a Megatron dist checkpoint",
        "template-mismatch": "has shape",
        "missing-distcp": "missing: the checkpoint is incomplete",
        "truncated-distcp": "is truncated",
        "truncated-safetensors": "not a complete safetensors file",
        "export-over-input": "it is the input",
        "export-inside-input": "it is inside the input",
        "export-over-parent": "it contains the input",
        "export-over-template": "it is the input",
        "import-over-input": "it is the input",
    }
    for case, fragment in expected.items():
        message, wrote = results[case]
        assert message is not None, f"{case}: was not refused"
        assert fragment in message, f"{case}: {message}"
        assert "\n" not in message, f"{case}: message is not one line"
        assert not wrote, f"{case}: left output behind (or changed an input)"
