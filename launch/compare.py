"""Compare runs without W&B: `python launch/compare.py RUN_DIR [RUN_DIR ...] [--plot loss.png]`.

Prints the config keys that differ between the runs and, per run, final/best loss and val_loss,
tokens, steps and tokens/s; `--plot` writes a PNG of `--metric` (default: loss) against step.
"""

import argparse
import sys

from llmtrain.tracking.compare import compare_table, load_run, plot_metric


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", help="run directories (each with config.yaml, metrics.jsonl)")
    parser.add_argument("--plot", help="write a PNG of the metric's curves here")
    parser.add_argument("--metric", default="loss", help="metric to plot (default: loss)")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(d) for d in args.run_dirs]
    except FileNotFoundError as exc:
        sys.exit(str(exc))
    print(compare_table(runs))
    if args.plot:
        print(f"\nwrote {plot_metric(runs, args.plot, args.metric)}")


if __name__ == "__main__":
    main(sys.argv[1:])
