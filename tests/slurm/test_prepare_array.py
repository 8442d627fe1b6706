"""`sbatch --array=0-3 slurm/prepare.sbatch` on the local SLURM cluster: four array tasks prepare a
corpus in parts, the merge job the first task submits writes the shard folder, and it holds the
same shards (so training reads the same token stream) as one process preparing the same files; a
second submission of the array skips every finished part and keeps the merge."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from slurm_jobs import Job, cancel_leftovers, sbatch

from llmtrain.config import load_config
from llmtrain.data.loader import build_train_loader
from llmtrain.data.pretrain.prepare import prepare_shards
from llmtrain.data.shards import TokenShards

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

PARTS = 4
# One CPU per array task: two tasks run at once on the 2-CPU test node, the others queue.
ONE_CPU = ["--ntasks=1", "--cpus-per-task=1", "--gpus-per-node=0", "--time=15"]


def _corpus(folder: Path, shared_data: Path) -> Path:
    """c4_demo's 300 documents cut into 6 jsonl files of unequal length."""
    folder.mkdir(parents=True)
    lines = (shared_data / "c4_demo.jsonl").read_text().splitlines(keepends=True)
    cuts = [0, 20, 70, 90, 160, 230, len(lines)]
    for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
        (folder / f"part{k}.jsonl").write_text("".join(lines[a:b]))
    return folder


def _overrides(corpus: Path, shared_data: Path) -> list[str]:
    # Absolute paths: the jobs run in their own working directory (--chdir).
    return ["data=c4_demo", f"data.path={corpus}", f"data.tokenizer={shared_data / 'llama2_tokenizer.model'}"]


def _array_logs(workdir: Path, job: Job) -> list[str]:
    return [(workdir / "logs" / f"llmtrain-prep-{job.id}_{k}.out").read_text() for k in range(PARTS)]


def _run_array(workdir: Path, out: Path, overrides: list[str]) -> tuple[list[str], str]:
    """Submit the array, wait for it and for the merge job its first task submits; their logs."""
    array = sbatch(
        "prepare.sbatch", ["--out", str(out), *overrides], workdir, [f"--array=0-{PARTS - 1}", *ONE_CPU]
    )
    info = array.wait_done(timeout=600)
    logs = _array_logs(workdir, array)
    assert info.get("JobState") == "COMPLETED", (info, logs)
    (merge_id,) = re.findall(r"merge job: (\d+)", logs[0])
    merge = Job(merge_id, workdir)
    merged = merge.wait_done(timeout=300)
    merge_log = (workdir / "logs" / f"llmtrain-prep-merge-{merge_id}.out").read_text()
    assert merged.get("JobState") == "COMPLETED" and merged.get("ExitCode") == "0:0", (merged, merge_log)
    assert f"afterok:{array.id}" in merged.get("Dependency", "") or merged.get("Dependency") == "(null)"
    return logs, merge_log


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shared_data):
    workdir = tmp_path_factory.mktemp("prep-array")
    corpus = _corpus(workdir / "corpus", shared_data)
    overrides = _overrides(corpus, shared_data)
    out = workdir / "shards"
    try:
        first = _run_array(workdir, out, overrides)
        stamp = (out / "manifest.json").stat().st_mtime_ns
        again = _run_array(workdir, out, overrides)
    finally:
        cancel_leftovers()
    cfg = load_config([*overrides, "data.prep_workers=1"]).data
    reference = prepare_shards(cfg, workdir / "one-process", workers=1, progress=False)
    return {"cfg": cfg, "out": out, "reference": reference, "first": first, "again": again, "stamp": stamp}


def test_array_and_merge_job_give_the_one_process_shards_and_token_stream(prepared):
    out, reference = prepared["out"], prepared["reference"]
    logs, merge_log = prepared["first"]
    for k, log in enumerate(logs):
        assert f"part {k} of {PARTS}:" in log, log
    assert "shards:" in merge_log and "train:" in merge_log
    for split in ("train", "val"):
        ref_files = sorted((reference / split).iterdir())
        assert [p.name for p in ref_files] == sorted(p.name for p in (out / split).iterdir())
        assert all(p.read_bytes() == (out / split / p.name).read_bytes() for p in ref_files)
        a, b = TokenShards(reference, split), TokenShards(out, split)
        assert a.num_tokens > 10_000 and np.array_equal(a.read(0, a.num_tokens), b.read(0, b.num_tokens))
    # Training on the merged folder (data.shards_dir) draws the same windows as on the reference.
    cfg = prepared["cfg"]
    loaders = [
        build_train_loader(cfg, folder, 8, 4, 0, 1, seed=0, start_step=0) for folder in (reference, out)
    ]
    for (x, y), _ in zip(zip(*loaders), range(6)):
        assert np.array_equal(x["input_ids"], y["input_ids"]) and np.array_equal(x["labels"], y["labels"])


def test_rerun_of_the_array_skips_finished_parts_and_keeps_the_merge(prepared):
    logs, merge_log = prepared["again"]
    for k, log in enumerate(logs):
        assert f"part {k} of {PARTS} already prepared" in log, log
    assert "already merged" in merge_log
    assert (prepared["out"] / "manifest.json").stat().st_mtime_ns == prepared["stamp"]
