# Sourced by the sbatch scripts in this folder (not run on its own): where the repository is,
# environment defaults for the ranks, and a header in the job log. Every default yields to a value
# already in the environment, so `VAR=... sbatch slurm/train.sbatch` overrides it.

# sbatch runs a *copy* of the script from slurmd's spool folder, so `dirname $0` is not the
# repository: find it from the submit directory (or LLMTRAIN_ROOT when submitting from elsewhere).
export LLMTRAIN_ROOT=${LLMTRAIN_ROOT:-$SLURM_SUBMIT_DIR}
if [ ! -f "$LLMTRAIN_ROOT/launch/train.py" ]; then
    echo "no launch/train.py under $LLMTRAIN_ROOT: submit from the repository root or set LLMTRAIN_ROOT" >&2
    exit 2
fi
export PYTHON=${PYTHON:-python}

# sbatch exports the submitting shell's environment. A rendezvous left there (submitting from inside
# a torchrun or an earlier job) would give every job the same address and port ("address already in
# use"): a job always derives its own, from its node list and job id (llmtrain.cluster.slurm).
unset MASTER_ADDR MASTER_PORT RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE GROUP_RANK TORCHELASTIC_RUN_ID

# Ranks' CPU threads: the task's CPUs (set per script for per-node launchers that share them).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
# A failed or timed-out NCCL collective raises in every rank instead of hanging the job (old and
# new names: torch < 2.2 reads NCCL_ASYNC_ERROR_HANDLING).
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export NCCL_ASYNC_ERROR_HANDLING=${NCCL_ASYNC_ERROR_HANDLING:-1}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# Site specific, left unset here: NCCL_SOCKET_IFNAME / NCCL_IB_HCA name the fabric's interfaces.
export PYTHONUNBUFFERED=1          # rank output reaches the job log as it happens
export PYTHONFAULTHANDLER=1        # a fatal signal dumps every thread's Python stack into the log
export TOKENIZERS_PARALLELISM=false

# Slurm 22.05+ no longer lets srun inherit sbatch's --cpus-per-task; pass it on explicitly.
SRUN_CPUS=()
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    SRUN_CPUS=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
fi

echo "=== $(date -Is) job ${SLURM_JOB_ID} (${SLURM_JOB_NAME:-}) restart ${SLURM_RESTART_COUNT:-0}" \
     "nodes ${SLURM_JOB_NODELIST} tasks ${SLURM_NTASKS:-?} cwd $(pwd) args: $*"
