"""Chat with an exported model: `python launch/generate.py MODEL_DIR "prompt" ["prompt" ...]`.

MODEL_DIR is a Hugging Face folder (e.g. from launch/export_hf.py, LoRA merged) or a peft adapter
folder (`--adapter-only` export of a run that started from `model.pretrained`). Prompts are user
messages formatted with the chat template the model was fine-tuned with (read from the folder's
llmtrain_chat.json, else --chat-template), tokenized exactly as in training; greedy decoding.

python launch/generate.py out/sft_model "What is 12 + 7?" --max-new-tokens 32
"""

import argparse
import logging
import sys
from pathlib import Path

from llmtrain.cli import run
from llmtrain.generate import run_generate

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("prompts", nargs="*", help="user messages (or --prompts-file)")
    parser.add_argument("--prompts-file", type=Path, help="one user message per line")
    parser.add_argument(
        "--chat-template", help="auto|tokenizer|chatml|llama3|alpaca|none (default: as trained)"
    )
    parser.add_argument("--system-prompt")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname).1s %(name)s: %(message)s")
    prompts = list(args.prompts)
    if args.prompts_file:
        prompts += [line for line in args.prompts_file.read_text().splitlines() if line.strip()]
    if not prompts:
        sys.exit("give at least one prompt (or --prompts-file)")
    replies = run(
        lambda: run_generate(
            args.model_dir, prompts, args.chat_template, args.system_prompt, args.max_new_tokens, args.device
        )
    )
    for prompt, reply in replies:
        print(f">>> {prompt}\n{reply}\n")
