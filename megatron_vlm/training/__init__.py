"""The LongPT trainer: recipe config, token budget, Megatron forward/backward loop, checkpoints, logging.

Entry point: ``torchrun --nproc-per-node N -m megatron_vlm.train --config RECIPE.yaml [key=value ...]``.
"""
