"""Fixtures for the data tests: small corpora written into tmp_path, and their shards."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from llmtrain.config import DataConfig
from llmtrain.data.pretrain.prepare import prepare_shards


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.fixture
def make_shards(tmp_path: Path) -> Callable[..., Path]:
    """Shards (byte tokenizer unless overridden) of the given documents, one jsonl line each."""
    counter = iter(range(1000))

    def make(texts: list[str], **cfg: object) -> Path:
        n = next(counter)
        source = write_jsonl(tmp_path / f"docs{n}.jsonl", texts)
        settings = {"name": f"t{n}", "path": str(source), "format": "jsonl", "tokenizer": "byte", **cfg}
        return prepare_shards(DataConfig(**settings), tmp_path / f"shards{n}", workers=1, progress=False)

    return make
