"""Export a checkpoint to a Hugging Face folder: `python launch/export_hf.py RUN_DIR_OR_CHECKPOINT OUT_DIR [--best]`."""

import argparse
import logging
from pathlib import Path

from llmtrain.checkpoint.export import export_hf
from llmtrain.cli import run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "checkpoint", type=Path, help="a run directory (uses its latest checkpoint) or a step folder"
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument(
        "--adapter-only",
        action="store_true",
        help="LoRA runs: write the peft adapter alone instead of merging it",
    )
    parser.add_argument(
        "--best",
        action="store_true",
        help="the run's best evaluation's checkpoint (trainer.early_stopping / trainer.keep_best)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname).1s %(name)s: %(message)s")
    print(
        run(lambda: export_hf(args.checkpoint, args.out_dir, adapter_only=args.adapter_only, best=args.best))
    )
