"""Parallelism planner: which TP/PP/CP/DP layouts fit a model, a sequence length and a GPU budget.

    from megatron_vlm.planner import PlanRequest, plan, estimate_memory
    layouts = plan(PlanRequest(flavor="7B", seq_length=131072, num_gpus=64, gpu_memory_gb=80))

The estimate is per GPU, for the most loaded pipeline stage, in bytes:

- weights: parameters held by the rank (LLM layers of its stage split by TP, the embedding on the
  first stage, the output layer on the last, the vision tower on the first) x bytes per weight.
- grads: Megatron's DDP keeps one gradient buffer per rank in fp32 when training in bf16/fp8.
- optimizer: Adam moments (and fp32 master weights for bf16/fp8), divided over the data-parallel
  x context-parallel group with the distributed optimizer.
- activations: the tensors one micro-batch saves for backward, per transformer layer, for the
  rank's share of the sequence (s / cp) and, with sequence parallelism, of the hidden states (/ tp);
  times the micro-batches in flight on the first stage of a 1F1B pipeline. Itemised in
  :func:`layer_activation_elements`.
- logits: the output layer's [s/cp, V/tp] logits and what vocab-parallel cross-entropy keeps.
- vision: the ViT's activations: TP-split, no SP inside, each CP rank encoding its share of the
  images (parallel/cp_vision.py; `vision_cp=False` for every image on every rank), and the
  merged embeddings all-gathered over CP; every LLM token is taken as an image token (long
  documents are ~99% page tokens). Frozen, the ViT keeps nothing for backward.

Assumptions worth knowing: packed micro-batches of one sequence (THD, batch 1); Transformer
Engine kernels and flash attention on GPU (no s^2 scores kept; `kernels="local"` models Megatron's
local spec, the CPU path); the ViT split over TP like the LLM; no allocator fragmentation or
NCCL/CUDA-context overhead (the `reserve_gb` margin covers those). The local-kernel formulas are
checked against peak memory measured on CPU runs of small Megatron GPT models
(benchmarks/planner_memory.py, tests/unit/test_planner_memory.py); the TE/flash formulas, the
pipeline in-flight count and the vision term are derived, not measured here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from megatron_vlm.models.family import DEFAULT_FAMILY, get_family

GB = 1024**3


@dataclass(frozen=True)
class Shapes:
    """The model dimensions the planner needs (LLM and ViT)."""

    vocab_size: int
    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    tied_embeddings: bool = False
    vit_depth: int = 0
    vit_hidden_size: int = 0
    vit_ffn_hidden_size: int = 0
    vit_heads: int = 1
    merge: int = 2
    """Spatial merge: merge*merge ViT patches become one LLM token."""
    vit_patch_dim: int = 0
    """Length of one flattened image patch (the patch embedding's input width)."""
    kv_channels: int = 0
    """Per-head width when it is not hidden / heads (Qwen3-VL 4B, 32B); 0: hidden / heads."""
    qkv_bias: bool = True
    qk_norm: bool = False
    """An RMSNorm weight of head_dim for q and for k in every layer (Qwen3)."""
    vit_gated: bool = True
    """SwiGLU ViT blocks (Qwen2.5-VL); False: fc1-GELU-fc2 (Qwen3-VL)."""
    vit_norm_bias: bool = False
    """LayerNorm (weight and bias) in the ViT and mergers; False: RMSNorm."""
    vit_patch_bias: bool = False
    vit_position_embeddings: int = 0
    """Rows of the ViT's learned position grid (Qwen3-VL)."""
    vit_taps: int = 0
    """DeepStack taps: one more merger each, and one [s, hidden] tensor each on the first stage."""

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_heads


def shapes_for(flavor: str, family: str = DEFAULT_FAMILY) -> Shapes:
    """Shapes of a named flavor, from the model family's own flavor registry (models/<family>/config.py)."""
    cfg = get_family(family).flavor(flavor)  # raises ValueError naming the known flavors
    t, v = cfg.text, cfg.vision
    return Shapes(
        t.vocab_size, t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads,
        t.num_key_value_heads, t.tie_word_embeddings, v.depth, v.hidden_size, v.intermediate_size,
        v.num_heads, v.spatial_merge_size, v.patch_dim, kv_channels=t.head_dim, qkv_bias=t.qkv_bias,
        qk_norm=t.qk_norm, vit_gated=v.gated_mlp, vit_norm_bias=v.norm_bias, vit_patch_bias=v.patch_bias,
        vit_position_embeddings=v.num_position_embeddings, vit_taps=len(v.deepstack_visual_indexes),
    )


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    cp: int = 1
    dp: int = 1
    vpp: int = 1
    """Virtual pipeline stages per rank (1 = plain 1F1B)."""
    sequence_parallel: bool = True

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    def __str__(self) -> str:
        vpp = f" vpp={self.vpp}" if self.vpp > 1 else ""
        return f"tp={self.tp} pp={self.pp}{vpp} cp={self.cp} dp={self.dp}"


@dataclass(frozen=True)
class Training:
    """What the run does, apart from the layout."""

    seq_length: int = 131072
    precision: str = "bf16"
    """bf16 (bf16 weights, fp32 grads and master weights), fp8 (as bf16 in memory; TE keeps fp8
    copies of activations only in its GEMMs, which this estimate ignores), or fp32 (CPU checks)."""
    recompute: str = "selective"
    """none, selective (attention core only) or full (each layer keeps only its input)."""
    kernels: str = "te"
    """te (Transformer Engine layers, flash attention; the GPU path) or local (Megatron's local
    spec with unfused attention; the CPU path the tests measure)."""
    distributed_optimizer: bool = True
    optimizer: str = "adam"
    """adam (two moments) or sgd (none); sgd only for tests."""
    train_vision: bool = True
    """False freezes the ViT and merger: weights only, no grads/optimizer, activations not kept."""
    micro_batches: int = 32
    """Micro-batches per step on each DP rank (caps the number in flight in the pipeline)."""
    include_vision: bool = True
    """False plans a text-only model (the CPU checks use Megatron's GPT)."""
    vision_cp: bool = True
    """Images shared out over the CP ranks (megatron_vlm.parallel.cp_vision); False: every CP
    rank encodes every image of the micro-batch."""


@dataclass
class MemoryBreakdown:
    """Bytes per GPU of the most loaded pipeline stage."""

    weights: float = 0.0
    grads: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    logits: float = 0.0
    vision: float = 0.0
    """ViT activations (its weights/grads/optimizer are counted in the three above)."""

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations + self.logits + self.vision

    def as_gb(self) -> dict[str, float]:
        out = {k: v / GB for k, v in asdict(self).items()}
        out["total"] = self.total / GB
        return out


def _bytes(precision: str) -> tuple[int, int, int]:
    """(weight, grad, optimizer-state) bytes per parameter."""
    if precision in ("bf16", "fp8"):
        return 2, 4, 4  # fp32 grad buffer; fp32 master weights + 2 moments (counted per moment below)
    if precision == "fp32":
        return 4, 4, 4
    raise ValueError(f"precision must be bf16, fp8 or fp32, got {precision!r}")


def layer_params(h: int, f: int, heads: int, kv_heads: int, qkv_bias: bool = True, mlp_bias: bool = False,
                 head_dim: int | None = None, qk_norm: bool = False) -> int:
    """Parameters of one pre-norm transformer layer with GQA and a SwiGLU MLP (``head_dim``: None
    for h / heads; ``qk_norm``: RMSNorm weights on q and k)."""
    d = head_dim or h // heads
    q = heads * d
    qkv = h * (q + 2 * kv_heads * d) + (q + 2 * kv_heads * d if qkv_bias else 0)
    proj = q * h
    mlp = 3 * h * f + ((2 * f + h) if mlp_bias else 0)
    return qkv + proj + mlp + 2 * h + (2 * d if qk_norm else 0)  # two RMSNorm weights (+ q/k norms)


def _llm_layer_params(s: Shapes) -> int:
    return layer_params(s.hidden_size, s.ffn_hidden_size, s.num_heads, s.num_kv_heads, s.qkv_bias,
                        head_dim=s.head_dim, qk_norm=s.qk_norm)


def vision_params(s: Shapes) -> int:
    """ViT blocks (qkv and MLP biases; RMSNorm or LayerNorm), patch embedding (+ position grid),
    the merger MLP and one more merger per DeepStack tap."""
    hv, m, fv = s.vit_hidden_size, s.merge, s.vit_ffn_hidden_size
    norm = 2 if s.vit_norm_bias else 1  # parameters per normalised element
    mlp = 3 * hv * fv + 2 * fv + hv if s.vit_gated else 2 * hv * fv + fv + hv
    block = hv * 3 * hv + 3 * hv + hv * hv + hv + mlp + 2 * norm * hv
    patch_embed = s.vit_patch_dim * hv + (hv if s.vit_patch_bias else 0) + s.vit_position_embeddings * hv
    merged = hv * m * m
    merger_mlp = merged * merged + merged + merged * s.hidden_size + s.hidden_size
    mergers = norm * hv + merger_mlp + s.vit_taps * (norm * merged + merger_mlp)  # taps normalise the merged vector
    return s.vit_depth * block + patch_embed + mergers


def total_params(s: Shapes, include_vision: bool = True) -> int:
    """All parameters of the model (LLM layers, embeddings, final norm, and the ViT with its merger)."""
    llm = s.num_layers * _llm_layer_params(s)
    llm += s.vocab_size * s.hidden_size * (1 if s.tied_embeddings else 2) + s.hidden_size
    return llm + (vision_params(s) if include_vision and s.vit_depth else 0)


def layer_activation_elements(
    tokens: float, h: int, f: int, heads: int, kv_heads: int, tp: int, sp: bool, kernels: str, recompute: str,
    head_dim: int | None = None,
) -> tuple[float, float]:
    """(elements one layer keeps for backward, elements of its transient working set).

    Per token, with SP dividing everything by tp and without SP only the column/row-parallel
    interiors (after the QKV/FC1 GEMMs) divided:

    - te (Transformer Engine / flash): two RMSNorm inputs 2h, QKV and FC1 GEMM inputs 2h; q, k, v
      (h + 2 kv d)/tp and the attention output h/tp that flash attention keeps; FC1 output 2f/tp
      and the fused SwiGLU output f/tp. No s x s scores.
    - local (Megatron's local spec, used for the CPU checks): each RMSNorm also keeps its
      normalised input (4h in all), GEMM inputs 2h; q after RoPE, K and V repeated to all heads
      (3h/tp), the softmax probabilities heads/tp x s per token, the context h/tp; FC1 output
      2f/tp, SiLU output f/tp and the product f/tp. Its transient is the baddbmm result and
      Megatron's global score buffer (2 x heads/tp x s x s).

    Full recompute keeps only each layer's input (h) and rebuilds one layer at a time in backward,
    so its transient is one layer's kept set.
    """
    d = head_dim or h // heads
    q = heads * d  # the attention width (h, unless head_dim says otherwise)
    rep = tp if sp else 1  # the residual stream is split over TP only with sequence parallelism
    if kernels == "te":
        kept = tokens * ((4 * h) / rep + (q + 2 * kv_heads * d + q) / tp + 3 * f / tp)
        transient = 0.0
    elif kernels == "local":
        kept = tokens * ((6 * h) / rep + 4 * q / tp + 4 * f / tp) + (heads / tp) * tokens * tokens
        transient = 2 * (heads / tp) * tokens * tokens
    else:
        raise ValueError(f"kernels must be te or local, got {kernels!r}")
    if recompute == "full":
        return tokens * h / rep, kept + transient
    if recompute in ("none", "selective"):
        # With fused attention there is nothing left for selective recompute to drop.
        return kept, transient
    raise ValueError(f"recompute must be none, selective or full, got {recompute!r}")


def _in_flight(layout: Layout, micro_batches: int) -> float:
    """Micro-batches whose activations the first pipeline stage holds at the 1F1B peak (Megatron's count)."""
    if layout.pp == 1:
        return 1.0
    if layout.vpp == 1:
        return float(min(layout.pp, micro_batches))
    return min(layout.pp, micro_batches) * (1 + (layout.pp - 1) / (layout.pp * layout.vpp))


def estimate_memory(shapes: Shapes, layout: Layout, train: Training) -> MemoryBreakdown:
    """Per-GPU memory of the most loaded pipeline stage (first or last) for one training step."""
    first = _stage_memory(shapes, layout, train, first=True, last=layout.pp == 1)
    if layout.pp == 1:
        return first
    last = _stage_memory(shapes, layout, train, first=False, last=True)
    return first if first.total >= last.total else last


def _stage_memory(shapes: Shapes, layout: Layout, train: Training, first: bool, last: bool) -> MemoryBreakdown:
    s, tp, pp, cp = shapes, layout.tp, layout.pp, layout.cp
    wb, gb, ob = _bytes(train.precision)
    moments = {"adam": 2, "sgd": 0}[train.optimizer]
    opt_per_param = ob * moments + (4 if train.precision != "fp32" else 0)  # + fp32 master weights
    shard = layout.dp * cp if train.distributed_optimizer else 1

    layers_here = math.ceil(s.num_layers / pp)
    embed = s.vocab_size * s.hidden_size
    llm = layers_here * _llm_layer_params(s) / tp
    if first:
        llm += embed / tp
    if last:
        llm += s.hidden_size  # final norm
        if not (first and s.tied_embeddings):  # a tied output layer on its own stage is a copy
            llm += embed / tp
    with_vision = first and train.include_vision and s.vit_depth > 0
    vit = vision_params(s) / tp if with_vision else 0.0
    trained = llm + (vit if train.train_vision else 0.0)

    mem = MemoryBreakdown()
    mem.weights = (llm + vit) * wb
    mem.grads = trained * gb
    mem.optimizer = trained * opt_per_param / shard

    tokens = train.seq_length / cp
    kept, transient = layer_activation_elements(
        tokens, s.hidden_size, s.ffn_hidden_size, s.num_heads, s.num_kv_heads, tp,
        layout.sequence_parallel, train.kernels, train.recompute, head_dim=s.head_dim,
    )
    act_bytes = 4 if train.precision == "fp32" else 2
    rep = tp if layout.sequence_parallel else 1
    in_flight = _in_flight(layout, train.micro_batches) if first else 1.0
    head = 0.0
    if last:  # final norm input (+ its normalised input on local kernels) and the output GEMM input
        head = tokens * s.hidden_size * (3 if train.kernels == "local" else 2) / rep
    mem.activations = (in_flight * layers_here * kept + head + transient) * act_bytes

    if last:
        # Vocab-parallel cross-entropy turns the logits into an fp32 softmax in place (a bf16 run
        # first holds the bf16 logits beside their fp32 copy) and reuses that buffer for the
        # gradient. Without gradient-accumulation fusion (local kernels) the output layer's
        # weight gradient is one more weight-sized fp32 tensor before it is added to .grad.
        logits = tokens * s.vocab_size / tp
        mem.logits = logits * (4 + (2 if act_bytes == 2 else 0))
        if train.kernels == "local":
            mem.logits += embed / tp * 4

    if with_vision:
        # The ViT (models/qwen2_5_vl/vision.py) is TP-split but has no SP or CP inside; with
        # vision_cp each CP rank encodes its share of the images (parallel/cp_vision.py), else
        # all of them. merge^2 patches per image token.
        patches = train.seq_length * s.merge * s.merge / (cp if train.vision_cp else 1)
        v_kept, v_transient = layer_activation_elements(
            patches, s.vit_hidden_size, s.vit_ffn_hidden_size, s.vit_heads, s.vit_heads, tp,
            False, train.kernels, train.recompute if train.train_vision else "full",
        )
        # the merger's output, before the CP split, and each DeepStack tap's [s/cp, hidden] (models/qwen3_vl/model.py)
        merged = train.seq_length * s.hidden_size + s.vit_taps * tokens * s.hidden_size / rep
        if train.train_vision:
            mem.vision = (in_flight * s.vit_depth * v_kept + v_transient + merged) * act_bytes
        else:  # frozen: no graph kept, only one block's working set at a time and the output
            mem.vision = (v_transient + merged) * act_bytes
    return mem


@dataclass(frozen=True)
class PlanRequest:
    flavor: str = "7B"
    family: str = DEFAULT_FAMILY
    seq_length: int = 131072
    num_gpus: int = 64
    gpu_memory_gb: float = 80.0
    gpus_per_node: int = 8
    precision: str = "bf16"
    recompute: str = "selective"
    train_vision: bool = True
    vision_cp: bool = True
    global_batch_tokens: int = 4 * 1024 * 1024
    token_budget: int = 5_000_000_000
    reserve_gb: float = 6.0
    """Kept free for the CUDA context, NCCL buffers and allocator fragmentation."""


@dataclass
class PlanEntry:
    layout: Layout
    memory: MemoryBreakdown
    micro_batches: int
    """Micro-batches per step on each DP rank (global batch sequences / dp)."""
    fits: bool
    score: tuple = field(default=(), repr=False)


@dataclass
class Budget:
    global_batch_sequences: int
    steps: int
    tokens_trained: int


def budget(req: PlanRequest) -> Budget:
    """Steps the token budget implies: whole global batches of packed max-length sequences."""
    seqs = max(1, req.global_batch_tokens // req.seq_length)
    tokens_per_step = seqs * req.seq_length
    steps = req.token_budget // tokens_per_step
    return Budget(seqs, steps, steps * tokens_per_step)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_layouts(shapes: Shapes, req: PlanRequest) -> list[Layout]:
    """Layouts Megatron can build: tp within a node dividing heads and KV heads, pp at most the layers,
    cp dividing the sequence into 2*cp chunks, dp = what is left."""
    out = []
    for tp in _divisors(req.num_gpus):
        if tp > req.gpus_per_node or shapes.num_heads % tp or shapes.num_kv_heads % tp:
            continue
        for pp in _divisors(req.num_gpus // tp):
            if pp > shapes.num_layers:
                continue
            for cp in _divisors(req.num_gpus // (tp * pp)):
                if req.seq_length % (2 * cp):
                    continue
                dp = req.num_gpus // (tp * pp * cp)
                out.append(Layout(tp=tp, pp=pp, cp=cp, dp=dp, sequence_parallel=tp > 1))
    return out


def plan(req: PlanRequest) -> list[PlanEntry]:
    """Every buildable layout with its estimate, the fitting ones first, best first.

    Among fitting layouts, preference goes to less model parallelism (less communication): fewer
    pipeline stages, then the smaller tp*cp product, then tp over cp (NVLink-local), then more dp.
    """
    shapes = shapes_for(req.flavor, req.family)
    seqs = budget(req).global_batch_sequences
    entries = []
    for layout in candidate_layouts(shapes, req):
        if seqs % layout.dp:
            continue  # the global batch must split evenly over DP ranks
        micro = seqs // layout.dp
        train = Training(
            seq_length=req.seq_length, precision=req.precision, recompute=req.recompute,
            train_vision=req.train_vision, vision_cp=req.vision_cp, micro_batches=micro,
        )
        mem = estimate_memory(shapes, layout, train)
        fits = mem.total <= (req.gpu_memory_gb - req.reserve_gb) * GB
        score = (not fits, layout.pp, layout.tp * layout.cp, layout.cp, -layout.dp, mem.total)
        entries.append(PlanEntry(layout, mem, micro, fits, score))
    entries.sort(key=lambda e: e.score)
    return entries


def format_plan(req: PlanRequest, entries: list[PlanEntry], limit: int = 10) -> str:
    """The table tools/plan_parallelism.py prints."""
    b = budget(req)
    lines = [
        f"{req.family} {req.flavor} at seq {req.seq_length:,} on {req.num_gpus} GPUs x {req.gpu_memory_gb:g} GB, "
        f"{req.precision}, recompute={req.recompute}, vision {'trained' if req.train_vision else 'frozen'}",
        f"budget: {req.token_budget:,} tokens / ({b.global_batch_sequences} x {req.seq_length:,} tokens per step)"
        f" = {b.steps:,} steps ({b.tokens_trained:,} tokens)",
        f"{'layout':<24} {'mb/dp':>5} {'weights':>8} {'grads':>7} {'optim':>7} {'activ':>7} {'logits':>7}"
        f" {'vision':>7} {'total GB':>9}  fits",
    ]
    fitting = [e for e in entries if e.fits]
    shown = (fitting or entries)[:limit]
    for e in shown:
        g = e.memory.as_gb()
        lines.append(
            f"{str(e.layout):<24} {e.micro_batches:>5} {g['weights']:>8.1f} {g['grads']:>7.1f} {g['optimizer']:>7.1f}"
            f" {g['activations']:>7.1f} {g['logits']:>7.1f} {g['vision']:>7.1f} {g['total']:>9.1f}  {'yes' if e.fits else 'no'}"
        )
    if not fitting:
        lines.append(f"no layout fits in {req.gpu_memory_gb:g} GB - {req.reserve_gb:g} GB reserve; smallest shown")
    else:
        lines.append(f"{len(fitting)} of {len(entries)} layouts fit; first is the suggestion")
    return "\n".join(lines)
