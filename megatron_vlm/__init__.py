"""megatron-vlm: long-context vision-language training on Megatron-Core.

Importing this package imports nothing optional (no Transformer Engine, flash-attn, apex or DALI)
and touches no GPU; see ../DESIGN.md for the layout of the subpackages.
"""

__version__ = "0.1.0"
