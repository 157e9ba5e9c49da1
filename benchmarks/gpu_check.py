"""The one-shot GPU check's stages (run by benchmarks/gpu_check.sh; see its header for how to run).

    python benchmarks/gpu_check.py [--stages a,b,c,d] [--workdir DIR] [--quick]

Stages, each reported PASS / FAIL / SKIP with a one-line reason and its time:

a. train: the debug Qwen2.5-VL in bf16 for 20 steps on synthetic packed batches, saved at step 10;
   a second run of 10 steps resumed to 20 must give the uninterrupted run's losses 11-20
   (relative 1e-3 on a GPU, whose backward kernels may sum in a different order; exact on CPU).
b. rope: the LLM's rope angle at position 131,071 against float64, the model built as the trainer
   builds it in bf16 (benchmarks/rope_error.py): at most 0.02 rad, frequencies float32.
c. throughput: a 7B-width Qwen2.5-VL LLM cut to 4 layers (the full ViT) on one packed 32K sequence
   of 4 documents with 2 page images each, forward + backward: tokens/s and MFU (FLOPs from
   training/flops.py), beside HF transformers (SDPA) on the same 4 documents unpacked, one at a
   time (same tokens and images), in the same run. Figures only; FAIL only on an error or a
   non-finite loss.
d. tests/gpu under pytest: PASS when none fails, SKIP when all skip (their reasons listed).

a, c and d need CUDA and SKIP without it; b runs anywhere (on CPU it checks the CPU build).
``--quick`` shrinks every stage to a few seconds on CPU (tests/unit/test_gpu_check.py runs the
stages that way); its figures mean nothing. Exit status: 1 if any stage failed, else 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
STATUSES = ("PASS", "FAIL", "SKIP")


class Skip(Exception):
    """The stage cannot run here; the message says why."""


class Failed(Exception):
    """The stage ran and its check failed; the message says what."""


@dataclass
class StageResult:
    name: str
    status: str
    reason: str
    seconds: float
    details: dict = field(default_factory=dict)

    def line(self) -> str:
        return f"[gpu_check] {self.name}: {self.status} ({self.reason}) in {self.seconds:.0f} s"


def run_stage(name: str, fn, *args, **kwargs) -> StageResult:
    """Run one stage: PASS with the reason it returns, SKIP on ``Skip``, FAIL on anything else."""
    started = time.monotonic()
    try:
        details = fn(*args, **kwargs) or {}
        status, reason = "PASS", str(details.pop("reason", "ok"))
    except Skip as err:
        status, reason, details = "SKIP", str(err), {}
    except Failed as err:
        status, reason, details = "FAIL", str(err), {}
    except Exception as err:  # noqa: BLE001 - any error is this stage's failure, reported in one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        status, reason, details = "FAIL", f"{type(err).__name__}: {first}"[:300], {"traceback": traceback.format_exc()}
    return StageResult(name, status, reason, time.monotonic() - started, details)


def need_cuda() -> None:
    if not torch.cuda.is_available():
        raise Skip("no CUDA device")


def need(module: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise Skip(f"{module} is not installed ({why})")


def _single_rank_env() -> None:
    """One rank on this machine, on a port free now (each start of the process group takes a new one:
    the last one's socket may still be closing)."""
    from tests.dist_utils import free_port

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))


# ---------------------------------------------------------------- a. train, save, resume


def stage_train(workdir: Path, quick: bool = False) -> dict:
    """20 bf16 steps straight, and 10 + 10 resumed: equal losses for steps 11-20."""
    if not quick:
        need_cuda()
    need("megatron.core", "the trainer")
    from megatron_vlm.training.config import load_recipe
    from megatron_vlm.training.loop import train

    steps, seq = (4, 128) if quick else (20, 2048)
    kind = ["model.kind=gpt", "train.precision=fp32"] if quick else ["model.kind=qwen2_5_vl", "train.precision=bf16"]

    def run(ckpt: str, max_steps: int):
        recipe = load_recipe(None, [
            *kind, "model.flavor=debug", "train.data_source=synthetic", f"data.max_seq_length={seq}",
            f"train.global_batch_tokens={2 * seq}", f"train.tokens={2 * seq * steps}", f"train.max_steps={max_steps}",
            "train.lr=1e-3", "train.warmup_steps=2", f"checkpoint.dir={ckpt}", "checkpoint.save_interval=0",
            "logging.wandb_mode=disabled",
        ])
        _single_rank_env()
        result = train(recipe)
        return [m["loss"] for m in result.history], result.start_step

    straight, _ = run(str(workdir / "straight"), steps)
    first, _ = run(str(workdir / "split"), steps // 2)
    resumed, start = run(str(workdir / "split"), steps)
    if start != steps // 2 or len(resumed) != steps - steps // 2:
        raise Failed(f"resume started at step {start} with {len(resumed)} steps, expected {steps // 2} and {steps - steps // 2}")
    if not all(math.isfinite(x) for x in straight + resumed):
        raise Failed(f"non-finite loss: {straight + resumed}")
    tolerance = 0.0 if quick else 1e-3
    worst = max(abs(a - b) / max(abs(a), 1e-8) for a, b in zip(straight, first + resumed))
    if worst > tolerance:
        raise Failed(f"the split and resumed run's losses differ from the uninterrupted run's by up to {worst:.2e} "
                     f"(relative; limit {tolerance})")
    return {"reason": f"{steps} steps, resumed at {steps // 2}: losses equal to {worst:.1e} (first {straight[0]:.3f}, "
                      f"last {straight[-1]:.3f})", "losses": straight}


# ---------------------------------------------------------------- b. rope angle error


def stage_rope(limit: float = 0.02) -> dict:
    """Rope angle at 131,071 within ``limit`` rad of float64, frequencies float32 (bf16 model)."""
    need("megatron.core", "the trainer's build")
    from benchmarks.rope_error import measure
    from megatron_vlm.parallel import ParallelLayout, destroy, initialize

    _single_rank_env()
    initialize(ParallelLayout())
    try:
        result = measure("qwen2_5_vl", "debug", "bf16", 4e6, [100, 131_071, 524_287])
    finally:
        destroy()
    error = result["errors"][131_071]
    text = (f"on {result['device']}: inv_freq {'/'.join(result['inv_freq_dtypes'])}, angle error "
            f"{error:.4f} rad at 131,071, {result['errors'][524_287]:.4f} at 524,287 (limit {limit})")
    if error > limit or result["inv_freq_dtypes"] != ["torch.float32"]:
        raise Failed(text)
    return {"reason": text, **result}


# ---------------------------------------------------------------- c. throughput


@dataclass(frozen=True)
class ThroughputShape:
    flavor: str = "7B"
    num_layers: int = 4
    docs: int = 4
    doc_tokens: int = 8192
    grid: tuple[int, int, int] = (1, 114, 88)  # a US-Letter page at 144 DPI: 1232x1596 px, 2,508 tokens
    images_per_doc: int = 2
    warmup: int = 1
    iters: int = 3


QUICK_SHAPE = ThroughputShape(flavor="debug", num_layers=2, docs=2, doc_tokens=96, grid=(1, 4, 6), warmup=0, iters=1)


def _documents(cfg, shape: ThroughputShape, seed: int = 0) -> list[dict]:
    """Token ids (text, vision start, image pads, vision end, ...) and pixels for each document."""
    g = torch.Generator().manual_seed(seed)
    t, h, w = shape.grid
    pads = t * h * w // cfg.vision.spatial_merge_size**2
    text = shape.doc_tokens - shape.images_per_doc * (pads + 2)
    if text < 2:
        raise ValueError(f"{shape.doc_tokens} tokens cannot hold {shape.images_per_doc} images of {pads} tokens")
    docs = []
    for _ in range(shape.docs):
        ids = []
        for _ in range(shape.images_per_doc):
            ids += [cfg.vision_start_token_id] + [cfg.image_token_id] * pads + [cfg.vision_end_token_id]
        ids += torch.randint(0, 1000, (text,), generator=g).tolist()
        grid = torch.tensor([list(shape.grid)] * shape.images_per_doc)
        pixels = torch.randn(int(grid.prod(-1).sum()), cfg.vision.patch_dim, generator=g)
        docs.append({"ids": torch.tensor(ids), "grid": grid, "pixels": pixels})
    return docs


def _timed(step, warmup: int, iters: int, device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / iters


def stage_throughput(shape: ThroughputShape = ThroughputShape(), quick: bool = False, peak_tflops: float = 989.0) -> dict:
    """Ours (packed) and HF SDPA (unpacked, one document at a time): forward + backward tokens/s and MFU."""
    if not quick:
        need_cuda()
    need("megatron.core", "our model")
    from transformers import Qwen2_5_VLConfig as HFConfig
    from transformers import Qwen2_5_VLForConditionalGeneration

    from megatron_vlm.models.common.attention import packed_seq_params
    from megatron_vlm.models.qwen2_5_vl.config import to_hf_config
    from megatron_vlm.models.qwen2_5_vl.model import Qwen2_5_VLModel
    from megatron_vlm.models.qwen2_5_vl.position_ids import packed_mrope_position_ids
    from megatron_vlm.parallel import ParallelLayout, destroy, initialize
    from megatron_vlm.training.config import load_recipe
    from megatron_vlm.training.flops import flops_model_for
    from megatron_vlm.training.providers import get_provider, te_layers

    recipe = load_recipe(None, ["model.kind=qwen2_5_vl", f"model.flavor={shape.flavor}",
                                f"model.num_layers={shape.num_layers}", "train.data_source=synthetic"])
    provider = get_provider(recipe)
    cfg = provider.model_config(recipe)
    docs = _documents(cfg, shape)
    device = torch.device("cuda") if torch.cuda.is_available() and not quick else torch.device("cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lengths = [len(d["ids"]) for d in docs]
    grids = [g for d in docs for g in d["grid"].tolist()]
    flops = flops_model_for(recipe, provider).step_flops(lengths, grids)
    tokens = sum(lengths)

    _single_rank_env()
    initialize(ParallelLayout())
    try:
        spec = "te" if te_layers() else "local"
        ours = Qwen2_5_VLModel(cfg, spec=spec, params_dtype=dtype, bf16=dtype == torch.bfloat16,
                               use_cpu_initialization=device.type == "cpu").to(device)
        backend = ours.language_model.decoder.layers[0].self_attention.core_attention.backend
        ids = torch.cat([d["ids"] for d in docs])
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        grid = torch.cat([d["grid"] for d in docs])
        pos = packed_mrope_position_ids(ids, cu, grid, image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id)
        pixels = torch.cat([d["pixels"] for d in docs]).to(device, dtype)
        args = (ids[None].to(device), pos[:, None].to(device))
        kwargs = dict(labels=ids[None].to(device), pixel_values=pixels, image_grid_thw=grid,
                      packed_seq_params=packed_seq_params(cu.to(device)))
        losses = []

        def ours_step():
            ours.zero_grad(set_to_none=True)
            loss = ours(*args, **kwargs).float().mean()
            loss.backward()
            losses.append(float(loss))

        ours_s = _timed(ours_step, shape.warmup, shape.iters, device)
        ours = None  # free its memory before HF builds
    finally:
        destroy()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    hf_cfg = HFConfig(**to_hf_config(cfg))
    for c in (hf_cfg, hf_cfg.text_config, hf_cfg.vision_config):
        c._attn_implementation = "sdpa"
    with torch.device(device):  # initialise on the GPU: a 7B-width embedding takes long on the host
        hf = Qwen2_5_VLForConditionalGeneration(hf_cfg).to(dtype).train()
    hf_inputs = []
    for d in docs:
        mm = (d["ids"] == cfg.image_token_id).int()[None].to(device)
        hf_inputs.append(dict(input_ids=d["ids"][None].to(device), labels=d["ids"][None].to(device),
                              pixel_values=d["pixels"].to(device, dtype), image_grid_thw=d["grid"].to(device),
                              mm_token_type_ids=mm))

    def hf_step():
        hf.zero_grad(set_to_none=True)
        for inputs in hf_inputs:
            loss = hf(**inputs).loss
            loss.backward()
            losses.append(float(loss))

    hf_s = _timed(hf_step, shape.warmup, shape.iters, device)
    if not all(math.isfinite(x) for x in losses):
        raise Failed(f"non-finite loss in the timed steps: {losses}")
    peak = peak_tflops * 1e12
    out = {"tokens": tokens, "flops": flops, "ours_s": ours_s, "hf_s": hf_s,
           "ours_tokens_per_s": tokens / ours_s, "hf_tokens_per_s": tokens / hf_s,
           "ours_mfu": flops / ours_s / peak, "hf_mfu": flops / hf_s / peak, "spec": spec, "attention": backend,
           "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}
    out["reason"] = (f"{tokens:,} tokens ({shape.docs} docs x {shape.doc_tokens}, {len(grids)} images {list(shape.grid)}) "
                     f"fwd+bwd on {out['device']}: ours ({spec} spec, {backend} attention, packed) "
                     f"{out['ours_tokens_per_s']:,.0f} tok/s MFU {out['ours_mfu']:.1%}; HF SDPA unpacked "
                     f"{out['hf_tokens_per_s']:,.0f} tok/s MFU {out['hf_mfu']:.1%}; ours/HF {hf_s / ours_s:.2f}x "
                     f"(MFU against {peak_tflops:g} TFLOP/s)")
    return out


# ---------------------------------------------------------------- d. tests/gpu


def parse_pytest(output: str) -> dict:
    """Counts from pytest's summary line, and the FAILED / SKIPPED lines of ``-rfs``."""
    counts = {}
    for line in reversed(output.strip().splitlines()):
        if " in " in line and any(word in line for word in ("passed", "failed", "skipped", "error", "no tests")):
            for part in line.strip("= ").split(" in ")[0].split(","):
                bits = part.strip().split(" ")
                if len(bits) == 2 and bits[0].isdigit():
                    counts[{"errors": "error", "warnings": "warning"}.get(bits[1], bits[1])] = int(bits[0])
            break
    failed = [line[len("FAILED "):] for line in output.splitlines() if line.startswith("FAILED ")]
    skipped = [line[len("SKIPPED "):] for line in output.splitlines() if line.startswith("SKIPPED ")]
    return {"counts": counts, "failed": failed, "skipped": skipped}


def stage_gpu_tests(timeout_s: float = 240, paths: tuple[str, ...] = ("tests/gpu",)) -> dict:
    """tests/gpu in a subprocess: FAIL on a failure or error, SKIP when nothing ran, else PASS."""
    command = [sys.executable, "-m", "pytest", *paths, "-q", "-rfs", "-p", "no:cacheprovider"]
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise Failed(f"tests/gpu did not finish in {timeout_s:.0f} s") from None
    result = parse_pytest(done.stdout + done.stderr)
    counts = result["counts"]
    summary = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no summary"
    if result["failed"] or counts.get("failed") or counts.get("error") or done.returncode not in (0, 5):
        raise Failed(f"{summary}: {'; '.join(result['failed'][:5]) or 'pytest exit ' + str(done.returncode)}")
    if not counts.get("passed"):
        raise Skip(f"{summary}: {'; '.join(result['skipped'][:5])}")
    return {"reason": summary + (f" (skipped: {'; '.join(result['skipped'][:5])})" if result["skipped"] else ""), **result}


# ---------------------------------------------------------------- main


def header() -> str:
    from megatron_vlm.utils.versions import problems, report

    versions = report()
    image = os.environ.get("NVIDIA_PYTORCH_VERSION") or os.environ.get("PYTORCH_BUILD_VERSION") or "not an NGC image"
    lines = ["[gpu_check] " + " ".join(f"{k}={v or '-'}" for k, v in versions.items()), f"[gpu_check] image: {image}"]
    lines += [f"[gpu_check] unsupported: {p}" for p in problems(versions)]
    return "\n".join(lines)


def run(stages: str, workdir: Path, quick: bool = False) -> list[StageResult]:
    results = []
    for key in stages.split(","):
        key = key.strip()
        if key == "a":
            results.append(run_stage("a. train 20 steps, save, resume", stage_train, workdir / "train", quick))
        elif key == "b":
            results.append(run_stage("b. rope angle at 131,071", stage_rope))
        elif key == "c":
            shape = QUICK_SHAPE if quick else ThroughputShape()
            results.append(run_stage("c. throughput vs HF SDPA", stage_throughput, shape, quick))
        elif key == "d":
            results.append(run_stage("d. tests/gpu", stage_gpu_tests))
        else:
            raise SystemExit(f"unknown stage {key!r}; stages are a, b, c, d")
        print(results[-1].line(), flush=True)
        if results[-1].status == "FAIL" and "traceback" in results[-1].details:
            print(results[-1].details["traceback"], file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", default="a,b,c,d")
    parser.add_argument("--workdir", default=None, help="checkpoints of stage a (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, CPU allowed (tests only; figures mean nothing)")
    args = parser.parse_args(argv)
    unknown = [k for k in args.stages.split(",") if k.strip() not in ("a", "b", "c", "d")]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(map(repr, unknown))}; stages are a, b, c, d")
    print("[gpu_check] command: python benchmarks/gpu_check.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
          flush=True)
    print(header(), flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        results = run(args.stages, Path(args.workdir or tmp), args.quick)
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    print(f"[gpu_check] summary: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP", flush=True)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    sys.exit(main())
