"""Submit a SLURM job, or one job per point of a Hydra sweep; prints the job ids and run directories.

python launch/submit.py slurm/train.sbatch strategy=fsdp model=small
python launch/submit.py slurm/train.sbatch -m optim.lr=1e-4,3e-4 trainer.seed=1,2
python launch/submit.py --sbatch=--nodes=4 slurm/train.sbatch -m optim.lr=1e-4,3e-4 --dry-run
"""

import sys

from llmtrain.cluster.sweep import main

if __name__ == "__main__":
    sys.exit(main())
