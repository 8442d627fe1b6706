"""Benchmark a config: `python launch/bench.py [--steps N] [--warmup K] [--vs-hf] [--json F] [overrides]`.

python launch/bench.py --vs-hf +exp=pretrain                 # tiny model, tinyshakespeare, vs Trainer
torchrun --nproc_per_node 2 launch/bench.py strategy=fsdp    # per-rank memory and tokens/s
"""

import argparse
from pathlib import Path

from llmtrain.bench.run import run_benchmark
from llmtrain.config import load_config

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--vs-hf", action="store_true", help="also run transformers.Trainer on the same work")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args, overrides = parser.parse_known_args()
    run_benchmark(load_config(overrides), args.warmup, args.steps, args.vs_hf, args.json)
