"""Train: `python launch/train.py [hydra overrides]`, also under torchrun, deepspeed and srun.

python launch/train.py                                  # tiny model, generated data, CPU, minutes
python launch/train.py +exp=pretrain trainer.max_steps=50
torchrun --nproc_per_node 2 launch/train.py strategy=fsdp
deepspeed --num_gpus 2 launch/train.py strategy=zero3   # --local_rank is stripped before Hydra
"""

import sys

from llmtrain.cli import run
from llmtrain.config import load_config
from llmtrain.train.loop import train

if __name__ == "__main__":
    sys.exit(run(lambda: train(load_config(sys.argv[1:]))).exit_code)
