"""Train a sentencepiece tokenizer: `python launch/train_tokenizer.py --input FILE [FILE ...] --vocab-size N --out PREFIX`.

python launch/train_tokenizer.py --input ../shared/data/tinyshakespeare.txt --vocab-size 2000 --out tok/shakespeare
python launch/prepare_data.py data=tinyshakespeare data.tokenizer=tok/shakespeare.model
"""

import argparse
from pathlib import Path

from llmtrain.cli import run
from llmtrain.data.tokenizer.train import MODEL_TYPES, train_sentencepiece

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--input", nargs="+", type=Path, required=True, help=".txt/.md/.jsonl/.json/.parquet files"
    )
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument(
        "--out", type=Path, required=True, help="output prefix: writes PREFIX.model and PREFIX.vocab"
    )
    parser.add_argument("--text-field", default="text", help="field holding the text in jsonl/parquet rows")
    parser.add_argument("--model-type", choices=MODEL_TYPES, default="bpe")
    args = parser.parse_args()
    model = run(
        lambda: train_sentencepiece(args.input, args.vocab_size, args.out, args.text_field, args.model_type)
    )
    print(model)
