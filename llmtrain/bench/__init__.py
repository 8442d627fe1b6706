"""Throughput benchmark: our step loop, and the same work through `transformers.Trainer`."""
