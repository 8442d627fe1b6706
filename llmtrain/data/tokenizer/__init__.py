"""Tokenizers: load one named by `data.tokenizer`, convert sentencepiece models, train new ones."""
