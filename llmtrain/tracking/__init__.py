"""Console, metrics.jsonl and (optionally) W&B, written by rank 0 only."""
