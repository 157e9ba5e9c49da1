"""Model building blocks shared across model families (core attention, norms, specs)."""
