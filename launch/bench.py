"""Benchmark a config: `python launch/bench.py [--steps N] [--warmup K] [--vs-hf] [--prep] [--json F] [overrides]`.

python launch/bench.py --vs-hf +exp=pretrain                 # tiny model, tinyshakespeare, vs Trainer
torchrun --nproc_per_node 2 launch/bench.py strategy=fsdp    # per-rank memory and tokens/s
python launch/bench.py --prep data=c4_demo                   # data preparation vs datasets.map (data.prep_workers)
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
    parser.add_argument(
        "--classify", action="store_true", help="train a classifier fully vs transformers.Trainer and TF-IDF"
    )
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args, overrides = parser.parse_known_args()
    cfg = load_config(overrides)
    # Imported here, not above: --prep runs in spawned processes that re-import this module, and the
    # training benchmark's imports (torch) would count in their memory.
    if args.classify:
        from llmtrain.bench.classify import run_classify_comparison

        run_classify_comparison(cfg, json_path=args.json)
    elif args.prep:
        from llmtrain.bench.prep import bench_prepare

        bench_prepare(cfg, json_path=args.json)
    else:
        from llmtrain.bench.run import run_benchmark

        run_benchmark(cfg, args.warmup, args.steps, args.vs_hf, args.json)
