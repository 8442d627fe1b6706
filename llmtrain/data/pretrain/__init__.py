"""Pretraining: raw documents -> tokenized shards -> fixed-length windows."""
