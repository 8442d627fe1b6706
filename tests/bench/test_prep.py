"""The prep benchmark compares like with like: the same documents and tokens on both sides, and the ratio."""

import json

import pytest
import sentencepiece as spm

from llmtrain.bench.prep import BASELINE, CEILING, OURS, bench_prepare
from llmtrain.config import load_config
from llmtrain.data.errors import DataError


def test_prep_bench_tokenizes_the_same_documents_as_datasets_map_and_reports_the_ratio(
    tmp_path, capsys, shared_data
):
    texts = [json.loads(line)["text"] for line in (shared_data / "c4_demo.jsonl").open()][:120]
    # Empty documents get no EOS on either side; were one side to add it, the counts would differ.
    texts[10:10] = ["", ""]
    source = tmp_path / "small.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    model = shared_data / "llama2_tokenizer.model"
    cfg = load_config(["data=c4_demo", f"data.path={source}", f"data.tokenizer={model}"])

    ours, ceiling, baseline = bench_prepare(cfg, workers=2, json_path=tmp_path / "prep.json")

    ids = spm.SentencePieceProcessor(model_file=str(model)).encode([t for t in texts if t])
    assert ours.tokens == ceiling.tokens == baseline.tokens == sum(len(x) + 1 for x in ids)
    for r in (ours, baseline):
        assert r.workers == 2 and r.tokens_per_sec > 0 and r.peak_rss_mib > 0 and r.output_mib > 0
    assert ceiling.output_mib == 0, "the ceiling writes nothing"
    out = capsys.readouterr().out
    assert f"{OURS} / {BASELINE}: " in out and f"{OURS} / {CEILING}: " in out
    rows = json.loads((tmp_path / "prep.json").read_text())
    assert [r["name"] for r in rows] == [OURS, CEILING, BASELINE] and rows[0]["tokens_per_sec"] > 0


def test_prep_bench_refuses_sources_datasets_json_loader_would_read_differently():
    # Plain text is cut into paragraphs by our reader; datasets' json loader cannot read it at all.
    with pytest.raises(DataError, match="needs jsonl sources"):
        bench_prepare(load_config(["data=tinyshakespeare"]), workers=2)
