"""Model families: what every stage outside the model needs to know about a model, in one object.

    from megatron_vlm.models.family import get_family, family_for_kind
    fam = get_family("qwen2_5_vl")            # or family_for_kind(recipe.model.kind)
    fam.image.token_count(1584, 1224)         # the family's image rule (data/image_rule.py)
    fam.tokens.image_pad, fam.chat.version    # special token ids, chat format
    fam.flavor("7B"), fam.position_ids(ids, image_grid_thw=grids)

A family owns its image rule (patch, merge, min/max pixels, mean/std), its chat format, the
special token ids the data and the model rely on, and where its config, flavors and mRoPE
position ids live. Every stage that counts tokens (pool page tokens, build's counts and grids,
eval contexts, loader, packing) asks the family; none holds a model's numbers itself.

Each family is a package ``megatron_vlm.models.<name>`` with ``family.py`` (``FAMILY``, this
module's :class:`ModelFamily`), ``config.py`` (``FLAVORS``, ``flavor``, ``from_hf_config``,
``to_hf_config``) and ``position_ids.py`` (``mrope_position_ids``). Importing a family does not
import Megatron-Core or torch's model code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import Literal

from megatron_vlm.data.image_rule import ImageRule

FAMILIES = ("qwen2_5_vl", "qwen3_vl")
"""Known families, by the name recipes use as ``model.kind``."""
FamilyName = Literal[FAMILIES]  # noqa: F821 - a choice checked where options and recipes load
"""A family's name as an option type (utils/options.py checks it)."""
DEFAULT_FAMILY = "qwen2_5_vl"
"""The recipes' default model kind, and the family of data written before families were recorded."""
TEXT_ONLY_KINDS = {"gpt": DEFAULT_FAMILY}
"""Model kinds that are not a family (text-only test models) and the family whose data they read."""


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids the data path and the model rely on (the tokenizer's ids for these tokens)."""

    image_pad: int
    """``<|image_pad|>``: one per LLM token of an image."""
    video_pad: int
    """``<|video_pad|>``: one per LLM token of a video frame group."""
    vision_start: int
    """``<|vision_start|>`` before each image or video."""
    vision_end: int
    """``<|vision_end|>`` after each image or video."""
    pad: int
    """The tokenizer's pad token; fills packed sequences past their samples."""


@dataclass(frozen=True)
class ChatFormat:
    """How a training instance is laid out as chat text (rendered by data/tokens.py)."""

    version: str
    """Recorded in the shards' index; the loader refuses shards of another chat format."""
    system: str | None
    """The system turn the chat template adds by default; None: the template adds none."""


@dataclass(frozen=True)
class ModelFamily:
    """One model family; see the module docstring."""

    name: str
    """The family's name, also the recipe's ``model.kind``."""
    hf_model_type: str
    """``model_type`` in the HF ``config.json`` of this family."""
    image: ImageRule
    """Image resize rule, patch shape and normalisation."""
    tokens: SpecialTokens
    """Special token ids."""
    chat: ChatFormat
    """Chat layout of a training instance."""

    def module(self, name: str):
        """The family's ``config`` or ``position_ids`` module."""
        return importlib.import_module(f"megatron_vlm.models.{self.name}.{name}")

    def flavor_names(self) -> tuple[str, ...]:
        return tuple(self.module("config").FLAVORS)

    def flavor(self, name: str):
        """A fresh model config of a named flavor; ValueError naming the known ones otherwise."""
        return self.module("config").flavor(name)

    def from_hf_config(self, source):
        """The model config from an HF ``config.json`` (directory, file or dict)."""
        return self.module("config").from_hf_config(source)

    def position_ids(self, input_ids, image_grid_thw=None, video_grid_thw=None, **video):
        """mRoPE ids [3, L] of one sample's token ids (HF's ``get_rope_index`` for this family)."""
        ids, _ = self.module("position_ids").mrope_position_ids(
            input_ids, image_grid_thw, video_grid_thw, spatial_merge_size=self.image.merge_size,
            image_token_id=self.tokens.image_pad, video_token_id=self.tokens.video_pad, **video,
        )
        return ids


@cache
def get_family(name: str) -> ModelFamily:
    """The family called ``name``; ValueError naming the known ones otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(f"megatron_vlm.models.{name}.family").FAMILY


def family_for_kind(kind: str) -> ModelFamily:
    """The family whose data a recipe's ``model.kind`` trains on (a text-only kind reads its host's)."""
    return get_family(TEXT_ONLY_KINDS.get(kind, kind))


def family_of_hf_config(config: dict) -> ModelFamily:
    """The family of an HF ``config.json`` dict, by its ``model_type``; ValueError if none matches."""
    model_type = config.get("model_type")
    for name in FAMILIES:
        if get_family(name).hf_model_type == model_type:
            return get_family(name)
    known = ", ".join(get_family(n).hf_model_type for n in FAMILIES)
    raise ValueError(f"model_type {model_type!r} is not a supported family (known: {known})")
