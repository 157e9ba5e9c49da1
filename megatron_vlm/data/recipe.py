"""The data section of a recipe: what `preprocess_data.py build` makes and the loader reads.

A recipe YAML has top-level sections (model, parallel, data, train, checkpoint, logging); this
dataclass is its `data` section. Owned by the build/loader layer; the trainer's config embeds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataRecipe:
    """Length distribution, task mixture, budget and loader settings for one training run."""

    shards: str = ""
    """Directory of training shards (output of `preprocess_data.py build`)."""
    max_seq_length: int = 131072
    """Packed sequence length in tokens (the trainer's sequence length)."""
    length_distribution: str = "pool-native"
    """`pool-native`, `long-biased`, or `custom` (then `length_histogram` is used)."""
    length_histogram: dict[str, float] = field(default_factory=dict)
    """Custom length distribution: {"lo-hi" token range: weight}; used when length_distribution=custom."""
    mixture: dict[str, float] = field(
        default_factory=lambda: {"extract-single": 0.4, "extract-multi": 0.4, "reasoning": 0.2}
    )
    """Task mixture by share of samples; keys are task types."""
    short_share: float = 0.0
    """Share of short-context samples drawn from `short_source`."""
    short_source: str = ""
    """Short-sample dataset (JSONL or WebDataset of image+QA), for short_share > 0."""
    token_budget: int = 5_000_000_000
    """Tokens the built shards should hold in total."""
    seed: int = 1234
    """Seed for every random choice in build and loader."""
