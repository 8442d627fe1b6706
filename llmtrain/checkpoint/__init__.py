"""Checkpoints: atomic step folders with a `latest` pointer, resume, and Hugging Face export."""
