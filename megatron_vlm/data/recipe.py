"""The data section of a recipe: what `preprocess_data.py build` makes and the loader reads.

A recipe YAML has top-level sections (model, parallel, data, train, checkpoint, logging); this
dataclass is its `data` section. Owned by the build/loader layer; the trainer's config embeds it.
`DataRecipe.from_yaml(path)` reads the `data` section of a recipe (or a file that is only that).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from megatron_vlm.utils import options

LengthDistribution = Literal["pool-native", "long-biased", "custom"]
LENGTH_DISTRIBUTIONS = typing.get_args(LengthDistribution)
TASKS = ("extract-single", "extract-multi", "reasoning", "ocr-full", "ocr-needle")
SHORT_TASK = "short"


def _token_range(key: str) -> bool:
    """A length_histogram key: "lo-hi" with integers 0 <= lo < hi."""
    try:
        lo, hi = (int(x) for x in str(key).split("-"))
    except ValueError:
        return False
    return 0 <= lo < hi


@dataclass
class DataRecipe:
    """Length distribution, task mixture, budget and loader settings for one training run."""

    shards: str = ""
    """Directory of training shards (output of `preprocess_data.py build`)."""
    tokenizer: str = ""
    """Tokenizer directory (tokenizer.json) the trainer uses; build and loader count tokens with it."""
    max_seq_length: int = 131072
    """Packed sequence length in tokens (the trainer's sequence length)."""
    length_distribution: LengthDistribution = "pool-native"
    """`pool-native`, `long-biased`, or `custom` (then `length_histogram` is used)."""
    pages_range: list[int] = field(default_factory=lambda: [32, 50])
    """pool-native: documents with this many pages (inclusive), sampled as the pool has them."""
    long_threshold: int = 100_000
    """long-biased: a sample is long at this many tokens or more."""
    long_share: float = 0.839
    """long-biased: at least this share of document samples is long."""
    length_histogram: dict[str, float] = field(default_factory=dict)
    """Custom length distribution: {"lo-hi" token range: weight}; used when length_distribution=custom."""
    mixture: dict[str, float] = field(
        default_factory=lambda: {"extract-single": 0.4, "extract-multi": 0.4, "reasoning": 0.2}
    )
    """Task mixture by share of document samples; keys are task types."""
    short_share: float = 0.0
    """Share of short-context samples drawn from `short_source` (the mixture fills the rest)."""
    short_source: str = ""
    """Short-sample dataset (JSONL or WebDataset of image+QA), for short_share > 0."""
    token_budget: int = 5_000_000_000
    """Tokens the built shards should hold in total (sample tokens, before packing)."""
    max_repeats: int = 4
    """Build refuses a token budget that needs one instance more than this many times (the error
    says how many and the budget that fits); raise it knowingly for small pools."""
    seed: int = 1234
    """Seed for every random choice in build and loader."""
    min_pixels: int | None = None
    """Image resize rule: smallest area; None: the model family's (its preprocessor_config.json)."""
    max_pixels: int | None = None
    """Image resize rule: largest area; None: the model family's."""
    samples_per_shard: int = 64
    """Training instances per shard tar."""
    num_workers: int = 2
    """Loader: dataloader worker processes per data-parallel rank."""
    pack_buffer: int = 32
    """Loader: samples held (metadata only) to choose a best fit from."""
    pad_multiple: int = 1
    """Loader: each sub-sequence is padded to a multiple of this (2 x context-parallel size)."""
    variable_seq_length: bool = True
    """Loader: end each packed sequence at its samples' total rounded up to `seq_length_multiple`
    (true), or pad every sequence to `max_seq_length` (false: one fixed shape). docs/data.md."""
    seq_length_multiple: int = 128
    """Loader, variable length: sequence lengths are multiples of this (or max_seq_length); a
    multiple of pad_multiple, of 2 x CP, and of CP x TP with sequence parallelism."""
    image_backend: Literal["pil", "dali"] = "pil"
    """Loader: `pil` (CPU) or `dali` (GPU decode and resize, when nvidia.dali is installed)."""
    max_bad_samples: int = 1000
    """Loader: a stream stops with an error after this many bad samples in a row (corrupt, unreadable,
    longer than max_seq_length), or after a whole epoch of its samples without a good one."""

    RULES = (
        ("length_histogram", lambda d: d.length_distribution != "custom" or d.length_histogram,
         "length_distribution custom needs a length_histogram"),
        ("mixture", lambda d: d.mixture and set(d.mixture) <= set(TASKS) and min(d.mixture.values()) >= 0
         and sum(d.mixture.values()) > 0, f"needs non-negative shares of tasks in {TASKS}"),
        ("short_share", lambda d: 0 <= d.short_share < 1, "must be in [0, 1)"),
        ("short_source", lambda d: d.short_share == 0 or d.short_source, "needed when short_share > 0"),
        ("long_share", lambda d: 0 <= d.long_share <= 1, "must be in [0, 1]"),
        ("pages_range", lambda d: len(d.pages_range) == 2 and 1 <= d.pages_range[0] <= d.pages_range[1],
         "must be [min, max] pages with 1 <= min <= max"),
        ("length_histogram", lambda d: all(_token_range(k) and w >= 0 for k, w in d.length_histogram.items())
         and (not d.length_histogram or sum(d.length_histogram.values()) > 0),
         'must map "lo-hi" token ranges (0 <= lo < hi) to non-negative weights, not all 0'),
        *options.at_least(1, "max_seq_length", "token_budget", "samples_per_shard", "min_pixels", "max_pixels",
                          "long_threshold", "pack_buffer", "pad_multiple", "max_bad_samples", "max_repeats"),
        *options.at_least(0, "num_workers"),
        ("max_pixels", lambda d: None in (d.min_pixels, d.max_pixels) or d.max_pixels >= d.min_pixels,
         "must be at least min_pixels"),
        ("max_seq_length", lambda d: d.max_seq_length % d.pad_multiple == 0, "must be a multiple of pad_multiple"),
        ("seq_length_multiple", lambda d: not d.variable_seq_length
         or (d.seq_length_multiple >= 1 and d.seq_length_multiple % d.pad_multiple == 0),
         "must be a positive multiple of pad_multiple"),
    )

    @classmethod
    def from_dict(cls, data: dict) -> DataRecipe:
        """The data section from a mapping: unknown keys, bad types and broken RULES raise OptionError."""
        return options.build(cls, data, "data.")

    @classmethod
    def from_yaml(cls, path: str | Path) -> DataRecipe:
        from megatron_vlm.recipe_include import read_recipe_tree

        doc = read_recipe_tree(path)  # follows `base:` includes and fills ${name} (examples/recipes/README.md)
        return cls.from_dict(doc.get("data", doc) if isinstance(doc, dict) else {})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def image_rule(self, family):
        """The image rule the data uses: ``family``'s (a ModelFamily), with this recipe's pixel limits."""
        return family.image.with_pixels(self.min_pixels, self.max_pixels)

    def validate(self) -> None:
        """Raise OptionError (a ValueError) with a one-line reason for a bad or inconsistent recipe."""
        options.check(self, "data.")

    def task_shares(self) -> dict[str, float]:
        """Target share of every task, the short-context share included, summing to 1."""
        total = sum(self.mixture.values())
        shares = {t: (1 - self.short_share) * v / total for t, v in self.mixture.items() if v > 0}
        if self.short_share > 0:
            shares[SHORT_TASK] = self.short_share
        return shares


def model_kind(path: str | Path) -> str:
    """The recipe's ``model.kind`` (what the data is built for), or the default family's."""
    from megatron_vlm.models.family import DEFAULT_FAMILY
    from megatron_vlm.recipe_include import read_recipe_tree

    doc = read_recipe_tree(path)
    model = doc.get("model") if isinstance(doc, dict) else None
    return str((model or {}).get("kind") or DEFAULT_FAMILY)
