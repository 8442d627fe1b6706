"""`launch/bench.py --prep`: our shard preparation against `datasets.map` on the same corpus and tokenizer.

Both runs read the configured jsonl files, tokenize every document with the tokenizer `load_tokenizer`
builds from `data.tokenizer` (no special tokens, `split_special_tokens=True`, an EOS appended to each
non-empty document) in `workers` processes, and write the result to disk: our shards, or the Arrow
cache files `datasets` writes for `load_dataset` and `map`.

What is timed: tokenizer loading, reading, tokenizing and writing, in both runs (ours also hashes
the sources for its manifest, which stays in). Library imports are left out of both: a fixed cost of
the interpreter, not of the corpus.

Memory: each run executes in a fresh spawned process, so nothing the benchmark allocated shows up in
it (only what spawning re-imports from the launcher, `llmtrain.config`, the same in both). We report the child's own `ru_maxrss` (the process that reads the corpus
and writes the output: a streaming pipeline keeps it flat as the corpus grows) and the
`RUSAGE_CHILDREN` one (its tokenizer workers), and call the larger the run's peak. `getrusage` gives
no sum over processes alive at the same time: `RUSAGE_CHILDREN` is the largest single worker, and a
sum would count the pages forked workers share with their parent twice anyway.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmtrain.config import DataConfig, TrainConfig
from llmtrain.data.errors import DataError
from llmtrain.data.pretrain.sources import file_sha256, resolve_files

OURS = "llmtrain prepare_shards"
CEILING = "tokenizer alone"
BASELINE = "datasets.map"
# ru_maxrss is in KiB on Linux and in bytes on macOS.
_MAXRSS_BYTES = 1 if sys.platform == "darwin" else 1024


@dataclass
class PrepResult:
    name: str
    workers: int
    seconds: float
    # Tokens written, EOS included, train and validation together.
    tokens: int
    # Peak RSS of the process that reads and writes, and of its largest tokenizer worker.
    main_rss_mib: float
    workers_rss_mib: float
    # Everything the run left on disk (our shards; datasets' Arrow copy of the source and map output).
    output_mib: float

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / self.seconds

    @property
    def peak_rss_mib(self) -> float:
        return max(self.main_rss_mib, self.workers_rss_mib)

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), tokens_per_sec=self.tokens_per_sec, peak_rss_mib=self.peak_rss_mib)


def bench_prepare(
    cfg: TrainConfig, workers: int | None = None, json_path: Path | None = None, repeats: int = 1
) -> list[PrepResult]:
    """Prepare `cfg.data` with `prepare_shards`, time the tokenizer alone on the same documents, and
    prepare it with `datasets.map`; print the table, return the three rows.

    `workers`: None means `data.prep_workers`, and if that is None too, all cores (as in
    `prepare_shards`). `repeats`: the three runs are repeated this many times, interleaved (so a
    burst of load from other processes hits all three alike); each row is the run of median time,
    and the spread of the ratios over the repeats is printed. Raises if the runs wrote different
    numbers of tokens: then they read different documents and their throughputs are not comparable.
    """
    data = cfg.data
    if workers is None:
        workers = data.prep_workers if data.prep_workers is not None else (os.cpu_count() or 1)
    files = _jsonl_files(data)
    # Read the sources once so neither run pays for a cold page cache and the other does not.
    for path in files:
        file_sha256(path)
    rounds = [_one_round(data, files, workers) for _ in range(repeats)]
    results = [_median_run([r[k] for r in rounds]) for k in range(3)]
    print(prep_table(results))
    if repeats > 1:
        print(_spread(rounds))
    if json_path is not None:
        rows = [r.to_dict() for r in results]
        if repeats > 1:
            rows = {"median": rows, "rounds": [[r.to_dict() for r in one] for one in rounds]}  # type: ignore[assignment]
        json_path.write_text(json.dumps(rows, indent=2) + "\n")
    return results


def _one_round(data: DataConfig, files: list[Path], workers: int) -> list[PrepResult]:
    with tempfile.TemporaryDirectory(prefix="llmtrain-prep-bench-") as tmp:
        ours_dir, ceiling_dir, baseline_dir = (
            Path(tmp) / "ours",
            Path(tmp) / "ceiling",
            Path(tmp) / "datasets",
        )
        ceiling_dir.mkdir()
        ours = _in_fresh_process(OURS, workers, ours_dir, _prepare_ours, data, ours_dir, workers)
        ceiling = _in_fresh_process(CEILING, workers, ceiling_dir, _tokenizer_ceiling, data, files, workers)
        baseline = _in_fresh_process(
            BASELINE, workers, baseline_dir, _prepare_datasets_map, data, files, baseline_dir, workers
        )
    if not ours.tokens == ceiling.tokens == baseline.tokens:
        raise DataError(
            f"data={data.name}: {OURS} wrote {ours.tokens:,} tokens, {CEILING} counted {ceiling.tokens:,} and "
            f"{BASELINE} {baseline.tokens:,} from the same files ({', '.join(map(str, files))}), so they read "
            "different documents and the throughput ratio would compare different work. Our jsonl reader "
            "skips blank lines and rejects rows whose text is missing or not a string; datasets' json "
            "loader may keep them"
        )
    return [ours, ceiling, baseline]


def _median_run(runs: list[PrepResult]) -> PrepResult:
    return sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]


def _spread(rounds: list[list[PrepResult]]) -> str:
    """Per-round ratios (ours / datasets.map, ours / ceiling): how noisy the machine was."""
    lines = [f"over {len(rounds)} interleaved rounds:"]
    for name, k in ((BASELINE, 2), (CEILING, 1)):
        xs = [r[0].tokens_per_sec / r[k].tokens_per_sec for r in rounds]
        lines.append(
            f"  {OURS} / {name}: median {sorted(xs)[len(xs) // 2]:.2f}, min {min(xs):.2f}, "
            f"max {max(xs):.2f} (rounds: {' '.join(f'{x:.2f}' for x in xs)})"
        )
    return "\n".join(lines)


def prep_table(results: list[PrepResult]) -> str:
    """One row per run; then each run's ratio against the last one (the baseline), and ours against
    the tokenizer's own ceiling when it was measured."""
    header = (
        f"{'run':<26}{'workers':>8}{'tokens':>12}{'seconds':>9}{'tokens/s':>12}"
        f"{'peak RSS MiB':>14}{'main':>8}{'worker':>8}{'disk MiB':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.name:<26}{r.workers:>8}{r.tokens:>12,}{r.seconds:>9.2f}{r.tokens_per_sec:>12,.0f}"
            f"{r.peak_rss_mib:>14,.0f}{r.main_rss_mib:>8,.0f}{r.workers_rss_mib:>8,.0f}{r.output_mib:>10,.1f}"
        )
    base = results[-1]
    for r in results[:-1]:
        lines.append(
            f"{r.name} / {base.name}: {r.tokens_per_sec / base.tokens_per_sec:.2f}x tokens/s, "
            f"peak RSS {r.peak_rss_mib / base.peak_rss_mib:.2f}x"
        )
    by_name = {r.name: r for r in results}
    if OURS in by_name and CEILING in by_name:
        ratio = by_name[OURS].tokens_per_sec / by_name[CEILING].tokens_per_sec
        lines.append(f"{OURS} / {CEILING}: {ratio:.2f} of the tokenizer's own tokens/s")
    return "\n".join(lines)


def _jsonl_files(data: DataConfig) -> list[Path]:
    """The source files, which must all be jsonl: the one format both readers parse the same way."""
    if data.kind != "pretrain":
        raise DataError(f"data={data.name}: --prep benchmarks pretraining shards; data.kind is {data.kind!r}")
    if data.format not in ("jsonl", "auto"):
        raise DataError(
            f"data={data.name}: --prep compares against datasets' json loader, so it needs jsonl sources; "
            f"data.format is {data.format!r}"
        )
    files = resolve_files(data)
    other = [str(path) for path, fmt in files if fmt != "jsonl"]
    if other:
        raise DataError(f"data={data.name}: --prep needs jsonl sources; not jsonl: {', '.join(other)}")
    return [path for path, _ in files]


def _in_fresh_process(
    name: str, workers: int, out_dir: Path, run: Callable[..., tuple[float, int]], *args: Any
) -> PrepResult:
    """`run(*args)` in a spawned process; its (seconds, tokens) with that process's peak memory."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    # A spawned process defaults to spawning its own workers too; the run's Pool must start them the
    # way it would from the launcher (fork on Linux), or every worker re-imports and re-pickles.
    start_method = multiprocessing.get_start_method()
    proc = ctx.Process(target=_child, args=(send, start_method, run, args), name=f"prep-bench {name}")
    proc.start()
    send.close()  # so recv() sees EOF if the child dies before it answers
    try:
        status, payload = receive.recv()
    except EOFError:
        status, payload = "died", None
    proc.join()
    if status != "ok":
        detail = payload if status == "error" else f"it exited with code {proc.exitcode} before reporting"
        raise RuntimeError(f"prep benchmark run {name!r} failed in its child process: {detail}")
    seconds, tokens, main_rss, workers_rss = payload
    return PrepResult(
        name=name,
        workers=workers,
        seconds=seconds,
        tokens=tokens,
        main_rss_mib=main_rss / 2**20,
        workers_rss_mib=workers_rss / 2**20,
        output_mib=sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file()) / 2**20,
    )


def _child(send: Any, start_method: str, run: Callable[..., tuple[float, int]], args: tuple) -> None:
    try:
        multiprocessing.set_start_method(start_method, force=True)
        seconds, tokens = run(*args)
        main_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_BYTES
        workers_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * _MAXRSS_BYTES
        send.send(("ok", (seconds, tokens, main_rss, workers_rss)))
    except BaseException:
        send.send(("error", traceback.format_exc()))
    finally:
        send.close()


def _prepare_ours(data: DataConfig, out_dir: Path, workers: int) -> tuple[float, int]:
    import transformers  # noqa: F401  imported before the clock starts, as in the baseline

    from llmtrain.data.cache import read_manifest
    from llmtrain.data.pretrain.prepare import prepare_shards

    started = time.perf_counter()
    prepare_shards(data, out_dir, workers=workers, progress=False)
    seconds = time.perf_counter() - started
    splits = read_manifest(out_dir)["splits"].values()
    return seconds, sum(split["num_tokens"] for split in splits)


def _tokenizer_ceiling(data: DataConfig, files: list[Path], workers: int) -> tuple[float, int]:
    """What the tokenizer alone does on these cores: the Rust batch encoding of every document,
    read into memory first, nothing written. Tokenizer loading and reading are not timed here (they
    are in the other two rows), so this is an upper bound for any pipeline using this tokenizer."""
    import transformers  # noqa: F401

    from llmtrain.data.pretrain.sources import iter_file_documents
    from llmtrain.data.tokenizer.load import load_tokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "true" if workers > 1 else "false"
    os.environ.setdefault("RAYON_NUM_THREADS", str(workers))
    tok = load_tokenizer(data.tokenizer)
    texts = [d.text for path in files for d in iter_file_documents(path, "jsonl", data.text_field, "line")]
    backend = tok.backend_tokenizer
    backend.encode_special_tokens = True  # what split_special_tokens=True does, as in the other rows
    started = time.perf_counter()
    encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
    seconds = time.perf_counter() - started
    return seconds, sum(len(e.ids) + 1 for e in encodings if len(e.ids))


def _prepare_datasets_map(
    data: DataConfig, files: list[Path], cache_dir: Path, workers: int
) -> tuple[float, int]:
    # Read when datasets is imported: a local json file needs no hub, and the benchmark must not try it.
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets
    import pyarrow.compute as pc
    import transformers  # noqa: F401

    from llmtrain.data.tokenizer.load import load_tokenizer

    datasets.disable_progress_bars()
    started = time.perf_counter()
    tok = load_tokenizer(data.tokenizer)
    eos = tok.eos_token_id

    def encode(batch: dict[str, list]) -> dict[str, list]:
        # As llmtrain.data.pretrain.prepare: an EOS after every document, none for one without tokens.
        ids = tok(batch[data.text_field], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return {"input_ids": [[*x, eos] if x else [] for x in ids]}

    raw = datasets.load_dataset(
        "json", data_files=[str(f) for f in files], split="train", cache_dir=str(cache_dir)
    )
    tokenized = raw.map(
        encode, batched=True, num_proc=workers if workers > 1 else None, remove_columns=raw.column_names
    )
    seconds = time.perf_counter() - started
    lengths = pc.list_value_length(tokenized.data.column("input_ids"))
    return seconds, int(pc.sum(lengths).as_py() or 0)
