"""Building blocks shared by the models: local-spec RMSNorm and GPT layer/block specs."""
