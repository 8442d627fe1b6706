"""Raw text to training batches: tokenizers, sources, tokenized shards, windows, sampler, loaders."""
