"""Evaluate a classifier: `python launch/evaluate.py RUN_OR_EXPORT [--data FILE] [--split test]`.

RUN_OR_EXPORT is a run directory (its latest checkpoint), a step folder, or a folder written by
launch/export_hf.py. --data is a labelled CSV/JSON/JSONL/parquet file read with the run's
text/label fields (or a prepared data folder, with --split); without it, the run's own --split
(default test). Prints the metric table and writes predictions.jsonl, metrics.json and
confusion.png into --out (default RUN_OR_EXPORT/eval/NAME). A label the model does not know is an
error naming it and its line (exit 2).

python launch/evaluate.py runs/classify/RUN --data ../shared/data/chnsenticorp_htl.csv
"""

import argparse
import logging
from pathlib import Path

from llmtrain.cli import run
from llmtrain.train.predict import evaluate_classifier

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="run directory, step folder or exported folder")
    parser.add_argument("--data", type=Path, help="labelled file (or prepared folder) to evaluate")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--out", type=Path, help="output folder (default SOURCE/eval/NAME)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname).1s %(name)s: %(message)s")
    result = run(lambda: evaluate_classifier(args.source, args.data, args.split, args.out, args.device))
    print(result.table)
    print(f"wrote {result.out_dir}/predictions.jsonl, metrics.json, confusion.png")
