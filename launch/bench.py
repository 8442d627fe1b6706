"""Benchmark a config: `python launch/bench.py [--steps N] [--warmup K] [--vs-hf] [--prep] [--json F] [overrides]`.

python launch/bench.py --vs-hf +exp=pretrain                 # tiny model, tinyshakespeare, vs Trainer
torchrun --nproc_per_node 2 launch/bench.py strategy=fsdp    # per-rank memory and tokens/s
python launch/bench.py --prep data=c4_demo                   # data preparation vs datasets.map (data.prep_workers)
python launch/bench.py --longest --mem-cap-gib 0.125 --vs-hf model.max_position_embeddings=32768
    # longest data.seq_len within a per-rank cap: DP-only and parallel.sp=2 (2 ranks each), Trainer
python launch/bench.py --prep --repeat 5 data=c4_demo        # + the tokenizer's ceiling, median of 5 rounds
python launch/bench.py --classify +exp=classify data=chnsenticorp_htl trainer.max_steps=300
                      # classifier vs transformers.Trainer (test macro-F1, tokens/s) and TF-IDF + logreg
"""

import argparse
from pathlib import Path

from llmtrain.config import load_config

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--vs-hf", action="store_true", help="also run transformers.Trainer on the same work")
    parser.add_argument("--prep", action="store_true", help="benchmark data preparation instead of training")
    parser.add_argument("--repeat", type=int, default=1, help="--prep: interleaved rounds, median reported")
    parser.add_argument(
        "--classify", action="store_true", help="train a classifier fully vs transformers.Trainer and TF-IDF"
    )
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    longest = parser.add_argument_group("longest sequence within a memory cap (--longest)")
    longest.add_argument("--longest", action="store_true", help="search the longest data.seq_len per variant")
    longest.add_argument("--mem-cap-gib", type=float, help="per-rank memory cap (resting state + step peak)")
    longest.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME[:RANKS]=OVERRIDES (space-separated), repeatable; default: "
        "'dp:2=strategy=fsdp' and 'sp2:2=strategy=fsdp parallel.sp=2'",
    )
    longest.add_argument("--nproc", type=int, default=2, help="ranks of a variant that names none")
    longest.add_argument("--start", type=int, default=512, help="first length tried")
    longest.add_argument("--granule", type=int, default=256, help="lengths searched are multiples of this")
    longest.add_argument("--max-seq-len", type=int, default=1 << 20, help="stop doubling here")
    longest.add_argument("--mem-probe", type=Path, help=argparse.SUPPRESS)  # one probe job (internal)
    args, overrides = parser.parse_known_args()
    if args.longest:
        if args.mem_cap_gib is None:
            parser.error("--longest needs --mem-cap-gib")
        from llmtrain.bench.longest import run_longest

        run_longest(
            Path(__file__).resolve(), overrides, args.variant, args.mem_cap_gib, args.vs_hf, nproc=args.nproc,
            start=args.start, granule=args.granule, limit=args.max_seq_len, json_path=args.json,
        )  # fmt: skip
        raise SystemExit(0)
    cfg = load_config(overrides)
    # Imported here, not above: --prep runs in spawned processes that re-import this module, and the
    # training benchmark's imports (torch) would count in their memory.
    if args.mem_probe:
        from llmtrain.bench.memory_probe import probe_memory

        probe_memory(cfg, args.vs_hf, args.mem_probe)
    elif args.classify:
        from llmtrain.bench.classify import run_classify_comparison

        run_classify_comparison(cfg, json_path=args.json)
    elif args.prep:
        from llmtrain.bench.prep import bench_prepare

        bench_prepare(cfg, json_path=args.json, repeats=args.repeat)
    else:
        from llmtrain.bench.run import run_benchmark

        run_benchmark(cfg, args.warmup, args.steps, args.vs_hf, args.json)
