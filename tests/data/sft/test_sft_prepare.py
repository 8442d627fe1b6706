"""SFT preparation (`llmtrain/data/sft/prepare.py`): the pre-flight audit and its hard errors,
skipped examples counted in the manifest, and the cache that makes a rerun skip tokenization."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmtrain.config import DataConfig, SFTConfig
from llmtrain.data import check_manifest, ensure_prepared
from llmtrain.data.cache import MANIFEST
from llmtrain.data.errors import DataError
from llmtrain.data.sft import prepare as sft_prepare
from llmtrain.data.sft.dataset import SFTExamples
from llmtrain.data.tokenizer.load import load_tokenizer


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_cfg(tmp_path: Path, path: Path, **kw: object) -> DataConfig:
    sft = {"format": "auto", "chat_template": "chatml"}
    sft.update({k: kw.pop(k) for k in list(kw) if k in SFTConfig.__dataclass_fields__})
    settings = {
        "name": "t",
        "kind": "sft",
        "path": str(path),
        "tokenizer": "byte",
        "seq_len": 128,
        "val_fraction": 0.0,
        "cache_dir": str(tmp_path / "cache"),
        **kw,
    }
    return DataConfig(**settings, sft=SFTConfig(**sft))


GOOD = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
BAD = [
    {"messages": []},
    {"messages": [{"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": "q"}]},
    {"conversations": "not a list"},
]


def test_malformed_examples_are_skipped_and_counted_in_the_manifest(tmp_path: Path):
    data = write_jsonl(
        tmp_path / "d.jsonl",
        [GOOD, *BAD, GOOD, {"messages": [GOOD["messages"][0], {"role": "assistant", "content": "x" * 300}]}],
    )
    folder = ensure_prepared(sft_cfg(tmp_path, data))
    audit = json.loads((folder / MANIFEST).read_text())["audit"]
    assert audit["examples_read"] == 7
    assert audit["kept"] == 2 and audit["skipped_malformed"] == 4 and audit["dropped_too_long"] == 1
    assert any("d.jsonl example 1 (line 2)" in r for r in audit["skip_reasons"])
    assert len(SFTExamples(folder, "train")) == 2


def test_on_bad_example_error_stops_at_the_first_with_its_location(tmp_path: Path):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD, BAD[1]])
    with pytest.raises(DataError, match=r"d.jsonl example 1 \(line 2\): turn 0 has role 'assistant'"):
        ensure_prepared(sft_cfg(tmp_path, data, on_bad_example="error"))


def test_no_usable_example_is_a_hard_error(tmp_path: Path):
    data = write_jsonl(tmp_path / "d.jsonl", BAD)
    with pytest.raises(DataError, match="no usable example out of 4"):
        ensure_prepared(sft_cfg(tmp_path, data))


def test_a_template_without_an_end_token_is_a_hard_error(tmp_path: Path, monkeypatch):
    tok = load_tokenizer("byte")
    tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    monkeypatch.setattr(sft_prepare, "load_tokenizer", lambda spec: tok)
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    with pytest.raises(DataError, match="end-of-turn token .* is never a label"):
        ensure_prepared(sft_cfg(tmp_path, data, chat_template="tokenizer"))


def test_prepared_examples_are_cached_and_reused(tmp_path: Path, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD] * 5)
    cfg = sft_cfg(tmp_path, data)
    first = ensure_prepared(cfg)
    check_manifest(first, load_tokenizer("byte"))

    def fail(*args, **kwargs):
        raise AssertionError("re-tokenized a cached set")

    monkeypatch.setattr(sft_prepare, "prepare_sft", fail)
    assert ensure_prepared(cfg) == first
    monkeypatch.undo()
    # Anything that changes ids or masks is a new cache entry: template, seq_len, train_on_prompt, data.
    for changed in (
        sft_cfg(tmp_path, data, chat_template="llama3"),
        sft_cfg(tmp_path, data, seq_len=64),
        sft_cfg(tmp_path, data, train_on_prompt=True),
    ):
        assert ensure_prepared(changed) != first
    write_jsonl(data, [GOOD] * 6)
    assert ensure_prepared(cfg) != first


def test_alpaca_demo_accounts_for_every_example(tmp_path: Path, shared_data: Path):
    cfg = sft_cfg(
        tmp_path,
        shared_data / "alpaca_en_demo.json",
        tokenizer=str(shared_data / "llama2_tokenizer.model"),
        seq_len=256,
        val_fraction=0.05,
    )
    folder = ensure_prepared(cfg)
    manifest = json.loads((folder / MANIFEST).read_text())
    audit = manifest["audit"]
    assert audit["examples_read"] == 999
    dropped = audit["dropped_too_long"] + audit["dropped_no_trainable_left"] + audit["skipped_malformed"]
    assert audit["kept"] + dropped == 999 and audit["dropped_too_long"] > 0  # long outputs
    assert audit["end_token_labels"] == audit["kept"]  # one reply each, every one ends in a labelled eos
    train, val = SFTExamples(folder, "train"), SFTExamples(folder, "val")
    assert len(train) + len(val) == audit["kept"] and len(val) > 0
    assert train.lengths.max() <= cfg.seq_len + 1
    ids, mask = train[0]
    labels = ids[1:][mask[1:] == 1]
    assert labels[-1] == 2 and not mask[0]  # llama2 eos is the last label
    assert ids[-1] == 13 and not mask[-1]  # chatml's newline after the reply is prompt, not trained
    assert np.all(np.isin(mask, (0, 1)))


def reply(content: str, user: str = "q") -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": content}]}


def test_template_placeholders_are_counted_and_warned_with_an_example_location(tmp_path: Path, caplog):
    rows = [GOOD, reply("I am {{name}}, made by {{ author }}."), reply("Hi, {{name}} here."), GOOD]
    data = write_jsonl(tmp_path / "identity.jsonl", rows)
    with caplog.at_level("WARNING", logger="llmtrain"):
        folder = ensure_prepared(sft_cfg(tmp_path, data))
    audit = json.loads((folder / MANIFEST).read_text())["audit"]
    assert audit["placeholder_examples"] == 2 and audit["kept"] == 4  # kept, but never silently
    assert audit["placeholders"] == {"{{name}}": 2, "{{ author }}": 1}
    assert "2 examples hold template placeholders ({{name}} x2, {{ author }} x1)" in caplog.text
    assert "identity.jsonl example 1 (line 2): {{name}}" in caplog.text
    assert "2 with {{...}} placeholders" in audit["summary"]


def test_empty_assistant_replies_are_skipped_as_malformed_and_counted(tmp_path: Path, caplog):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD, reply(""), reply("  \n"), GOOD])
    with caplog.at_level("WARNING", logger="llmtrain"):
        folder = ensure_prepared(sft_cfg(tmp_path, data))
    audit = json.loads((folder / MANIFEST).read_text())["audit"]
    assert audit["kept"] == 2 and audit["skipped_malformed"] == 2 and audit["skipped_empty_reply"] == 2
    assert "(2 with an empty assistant reply)" in audit["summary"]
    assert "skipped 2 examples with an empty assistant reply" in caplog.text
    with pytest.raises(DataError, match=r"example 1 \(line 2\): turn 1 is an empty assistant reply"):
        ensure_prepared(sft_cfg(tmp_path, data, on_bad_example="error", seq_len=64))


@pytest.mark.parametrize("truncation", ["drop", "truncate_turns"])
def test_over_length_drops_have_one_name_in_summary_and_warning(tmp_path: Path, caplog, truncation):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD, reply("x" * 300), reply("y" * 300)])
    with caplog.at_level("WARNING", logger="llmtrain"):
        folder = ensure_prepared(sft_cfg(tmp_path, data, truncation=truncation))
    audit = json.loads((folder / MANIFEST).read_text())["audit"]
    assert audit["dropped_too_long"] == 2 and audit["dropped_no_trainable_left"] == 0
    assert "2 dropped as longer than data.seq_len" in audit["summary"]
    assert "dropped 2 examples as longer than data.seq_len=128" in caplog.text
    assert "no trainable token" not in audit["summary"] + caplog.text


def test_an_empty_validation_split_is_warned_with_counts(tmp_path: Path, caplog):
    # Three examples at val_fraction 0.01: none is held out (the split hashes the index).
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD] * 3)
    with caplog.at_level("WARNING", logger="llmtrain"):
        folder = ensure_prepared(sft_cfg(tmp_path, data, val_fraction=0.01))
    assert len(SFTExamples(folder, "val")) == 0
    assert "the validation split is empty: none of the 3 kept examples fell in data.val_fraction=0.01" in (
        caplog.text
    )
