"""Hugging Face causal LMs: build or load, attention backend, masking, loss, FLOPs."""
