#!/usr/bin/env bash
# Runs once per node under `srun --ntasks-per-node=1` (torchrun.sbatch, deepspeed.sbatch): starts the
# per-node launcher, which starts NPROC_PER_NODE ranks on this node.
#   node_launch.sh torchrun|deepspeed [hydra overrides...]
set -euo pipefail
launcher=$1
shift

# SLURM delivers USR1 (the preemption warning) to every process of the step, the ranks included;
# the launcher must survive it (USR1's default action is to exit, after which SLURM kills the ranks
# mid-checkpoint). An ignored signal stays ignored across exec; the ranks install their own handler.
trap '' USR1

nproc=${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
case "$launcher" in
    torchrun)
        # c10d rendezvous on the first node; the rendezvous assigns node ranks, so node order
        # does not matter and a node can join late.
        exec "$PYTHON" -m torch.distributed.run --nnodes="$SLURM_NNODES" --nproc-per-node="$nproc" \
            --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" \
            "$LLMTRAIN_ROOT/launch/train.py" "$@"
        ;;
    deepspeed)
        # --no_ssh: each node runs its own launcher (no pdsh), so the environment is this task's,
        # not the subset pdsh forwards. DeepSpeed still wants a hostfile naming every node.
        hostfile=$(mktemp "${TMPDIR:-/tmp}/llmtrain-hosts-$SLURM_JOB_ID.XXXXXX")
        scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/\$/ slots=$nproc/" > "$hostfile"
        exec deepspeed --hostfile "$hostfile" --no_ssh --node_rank="$SLURM_NODEID" \
            --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
            "$LLMTRAIN_ROOT/launch/train.py" "$@"
        ;;
    *)
        echo "node_launch.sh: unknown launcher '$launcher' (torchrun or deepspeed)" >&2
        exit 2
        ;;
esac
