"""Model building blocks shared across model families: core attention, SP-capable RMSNorm, local GPT specs."""
