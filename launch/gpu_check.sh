#!/usr/bin/env bash
# Run every CUDA path of llmtrain once and measure it (issue 17): `bash launch/gpu_check.sh`.
#
# On a CUDA machine, in this order (most important first, so a spent time budget skips the tail):
#   env, 8192^3 bf16 matmul TFLOP/s (the measured peak MFU is also given against)
#   tiny model, 3 steps of launch/train.py in bf16 under single, fsdp (torchrun, 1 rank), zero2
#     and zero3 (deepspeed launcher, 1 rank): loop, eval, checkpoint
#   fp16: DeepSpeed's dynamic loss scaling (zero2) and torch's GradScaler (single)
#   a planted non-finite step under fused AdamW: skipped on the device, no host sync
#   packed SFT with document masking (+exp=sft), and packed logits == one-at-a-time on SDPA
#   export (launch/export_hf.py) of the single, fsdp and zero3 runs, reloaded with transformers
#   gradient checkpointing (tiny through the loop; later the 1B shape's step peak memory with it)
#   llama3_2_1b shape under single, fsdp, zero2, zero3 (launch/bench.py, a few steps)
#   launch/bench.py --vs-hf model=llama3_2_1b trainer.precision=bf16 at seq 2048 and 4096 with
#     compile off, then on (the compile on/off check on CUDA): tokens/s, MFU vs the datasheet and
#     vs the measured matmul, step peak memory, ours vs transformers.Trainer
# Without CUDA the cheap items run on the tiny model (CPU, 2-3 steps) and the CUDA-only ones SKIP.
#
# Each check prints PASS/FAIL/SKIP with its reason and figures and the script goes on after a
# failure. Into ${OUT:-gpu_check_out}: summary.md (the table), results.json (every figure),
# gpu_check.log (every command's output), env.txt. Scratch (runs, caches) goes to a temporary
# folder. A global budget (GPU_CHECK_BUDGET_S, default 470 s) bounds the whole script; every
# command runs under `timeout`, cut to what is left.
# GPU_CHECK_ONLY="name ..." runs only the named checks (shell patterns): a second run can take what
# the budget skipped, e.g. GPU_CHECK_ONLY="env matmul bench_1b_seq4096_compile" (matmul first: the
# bench rows give MFU against its figure).
# Exit status: 0 when nothing FAILed.
#
# On the offline GPU machine the missing packages come as wheels: see launch/gpu_wheels.sh for
# how to build them and for the exact device-tool call.
set -uo pipefail
export PYTHONUNBUFFERED=1

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 1
# llmtrain runs from this checkout (no install needed); wheels carried to /tmp/site stay on the path.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-gpu_check_out}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
LOG="$OUT_DIR/gpu_check.log"
RESULTS="$WORK/results.jsonl"
: >"$LOG"
: >"$RESULTS"
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}
ONLY=${GPU_CHECK_ONLY:-}
START=$SECONDS
# Offline machine: nothing may try the hub or W&B. One Inductor cache for every compiled run.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    CUDA=1
else
    CUDA=0
fi

# ------------------------------------------------------------------------------------ machinery

left() { echo $((BUDGET_S - (SECONDS - START))); }

# record NAME STATUS REASON [FIGURES_JSON]: print one line and append one JSON record.
record() {
    local name=$1 status=$2 reason=$3 figures=${4:-"{}"}
    local seconds=$((SECONDS - CHECK_START))
    printf '[%s] %-28s %4ss  %s\n' "$status" "$name" "$seconds" "$reason" | tee -a "$LOG"
    "$PY" -c 'import json, sys
name, status, reason, seconds, figures = sys.argv[1:6]
print(json.dumps({"check": name, "status": status, "seconds": int(seconds), "reason": reason,
                  "figures": json.loads(figures)}))' "$name" "$status" "$reason" "$seconds" "$figures" >>"$RESULTS"
}

# begin NAME ESTIMATE_S: false (and the check is recorded as SKIP) when it is deselected or the
# budget cannot cover its estimate.
begin() {
    CHECK=$1
    CHECK_START=$SECONDS
    if [[ -n "$ONLY" ]]; then
        local pattern selected=0
        for pattern in $ONLY; do
            # shellcheck disable=SC2053  # a glob on purpose
            [[ "$CHECK" == $pattern ]] && selected=1
        done
        ((selected)) || return 1
    fi
    if (($(left) < $2)); then
        record "$CHECK" SKIP "time budget: $(left) s left, needs ~$2 s"
        return 1
    fi
    echo "=== $CHECK ($(left) s of budget left)" | tee -a "$LOG"
    return 0
}

skip_cpu() {
    CHECK_START=$SECONDS
    record "$1" SKIP "CUDA-only: $2"
}

# run TIMEOUT_S NAME CMD...: the command under `timeout` (cut to the budget), output to its own log
# and to gpu_check.log; sets RC (124: timed out) and STEP_LOG.
run() {
    local limit=$1 name=$2
    shift 2
    local budget
    budget=$(($(left) - 3))
    ((limit > budget)) && limit=$budget
    ((limit < 1)) && limit=1
    STEP_LOG="$WORK/logs/$name.log"
    mkdir -p "$WORK/logs"
    echo "\$ $*" >>"$LOG"
    timeout -k 5 "$limit" "$@" >"$STEP_LOG" 2>&1
    RC=$?
    # Long DeepSpeed/Trainer logs: their tail holds the error; the whole log stays in WORK.
    tail -n 300 "$STEP_LOG" >>"$LOG"
    if ((RC == 124 || RC == 137)); then
        echo "(timed out after ${limit} s)" >>"$LOG"
    fi
    return 0
}

# Why a command failed, in one line: its timeout, or its last error-looking line.
failure() {
    if ((RC == 124 || RC == 137)); then
        echo "timed out after its limit (rc $RC)"
        return
    fi
    local line
    line=$(grep -E 'Error|error:|Exception|Traceback|FAILED|assert' "$STEP_LOG" | tail -n 1 | cut -c1-300)
    echo "exit $RC: ${line:-$(tail -n 1 "$STEP_LOG" | cut -c1-300)}"
}

# probe NAME TIMEOUT_S SUBCOMMAND ARGS...: a launch/gpu_check.py check, recorded from its result line.
probe() {
    local name=$1 limit=$2
    shift 2
    run "$limit" "$name" "$PY" launch/gpu_check.py "$@"
    local line
    line=$(grep '^GPU_CHECK_RESULT ' "$STEP_LOG" | tail -n 1)
    if [[ -z "$line" ]]; then
        record "$name" FAIL "gpu_check.py $1 gave no result: $(failure)"
        return
    fi
    local parsed
    parsed=$("$PY" -c 'import json, sys
r = json.loads(sys.argv[1].split(" ", 1)[1])
print(r["status"]); print(r["reason"].replace("\n", " ")); print(json.dumps(r["figures"]))' "$line")
    record "$name" "$(sed -n 1p <<<"$parsed")" "$(sed -n 2p <<<"$parsed")" "$(sed -n 3p <<<"$parsed")"
}

# --------------------------------------------------------------------------------- what is run

if ((CUDA)); then
    DEVICE=cuda
    # Defaults of the tiny model (16 x 256 tokens a step); 3 steps, a 2-batch final eval.
    TINY=(trainer.max_steps=3 trainer.log_every=1 trainer.eval_every=0 trainer.eval_batches=2
        sched.warmup_steps=1)
else
    DEVICE=cpu
    # Two shared cores: a smaller batch keeps each run to seconds.
    TINY=(trainer.max_steps=2 trainer.log_every=1 trainer.eval_every=0 trainer.eval_batches=1
        sched.warmup_steps=1 trainer.global_batch_size=4 trainer.micro_batch_size=4 data.seq_len=128)
fi
TINY_STEPS=${TINY[0]#trainer.max_steps=}
COMMON=("data.cache_dir=$WORK/data_cache" "trainer.device=$DEVICE")
# The 1B shape through each strategy: a few small steps (the throughput runs come later).
ONE_B=(model=llama3_2_1b trainer.precision=bf16 data.seq_len=1024 trainer.global_batch_size=4
    trainer.micro_batch_size=4)
# Throughput: 32k tokens a step in micro-batches of 16k tokens at both lengths, the same for ours
# and the Trainer (which materialises fp32 logits: 16k x 128k vocab is 8 GiB, fine on 139 GiB).
BENCH_2048=(model=llama3_2_1b trainer.precision=bf16 data.seq_len=2048 trainer.global_batch_size=16
    trainer.micro_batch_size=8)
BENCH_4096=(model=llama3_2_1b trainer.precision=bf16 data.seq_len=4096 trainer.global_batch_size=8
    trainer.micro_batch_size=4)
MEASURED_TFLOPS=0

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# set_launcher STRATEGY: LAUNCH=(the command that starts one rank of it). Launchers run as modules,
# not console scripts: wheels installed with --target leave those off PATH.
set_launcher() {
    case $1 in
        fsdp) LAUNCH=("$PY" -m torch.distributed.run --nproc_per_node 1 --master_port "$(free_port)") ;;
        zero*) LAUNCH=("$PY" -m deepspeed.launcher.runner --num_gpus 1 --master_port "$(free_port)") ;;
        *) LAUNCH=("$PY") ;;
    esac
}

# train_check NAME STRATEGY ESTIMATE_S [--fp16] -- OVERRIDES...: launch/train.py, then its metrics.
train_check() {
    local name=$1 strategy=$2 estimate=$3
    shift 3
    local metrics_args=(--steps "$TINY_STEPS")
    if [[ "${1:-}" == --fp16 ]]; then
        # Dynamic loss scaling may skip the first steps while it finds its scale; one must apply.
        metrics_args+=(--fp16 --allowed-skips $((TINY_STEPS - 1)))
        shift
    fi
    [[ "${1:-}" == -- ]] && shift
    begin "$name" "$estimate" || return 0
    local run_dir="$WORK/runs/$name"
    set_launcher "$strategy"
    run 180 "$name" "${LAUNCH[@]}" launch/train.py "strategy=$strategy" "run.dir=$run_dir" \
        "${COMMON[@]}" "${TINY[@]}" "$@"
    if ((RC != 0)); then
        record "$name" FAIL "launch/train.py strategy=$strategy: $(failure)"
        return 0
    fi
    probe "$name" 60 run-metrics "$run_dir" "${metrics_args[@]}"
}

# bench_check NAME STRATEGY ESTIMATE_S TIMEOUT_S BENCH_ARGS... -- OVERRIDES...
bench_check() {
    local name=$1 strategy=$2 estimate=$3 limit=$4
    shift 4
    local bench_args=()
    while [[ "$1" != -- ]]; do
        bench_args+=("$1")
        shift
    done
    shift
    begin "$name" "$estimate" || return 0
    local json="$WORK/$name.json"
    set_launcher "$strategy"
    run "$limit" "$name" "${LAUNCH[@]}" launch/bench.py "${bench_args[@]}" --json "$json" \
        "strategy=$strategy" "${COMMON[@]}" "$@"
    if ((RC != 0)); then
        record "$name" FAIL "launch/bench.py strategy=$strategy $*: $(failure)"
        return 0
    fi
    probe "$name" 30 bench-json "$json" --measured-tflops "$MEASURED_TFLOPS"
}

# export_check NAME RUN_NAME ESTIMATE_S: launch/export_hf.py of a tiny run, reloaded with transformers.
export_check() {
    local name=$1 source=$2 estimate=$3
    begin "$name" "$estimate" || return 0
    local run_dir="$WORK/runs/$source"
    if [[ ! -f "$run_dir/checkpoints/latest" ]]; then
        record "$name" SKIP "no checkpoint from $source (that check did not pass)"
        return 0
    fi
    run 90 "$name" "$PY" launch/export_hf.py "$run_dir" "$WORK/export/$source"
    if ((RC != 0)); then
        record "$name" FAIL "launch/export_hf.py $source: $(failure)"
        return 0
    fi
    local reference=()
    if [[ "$source" != tiny_single_bf16 && -f "$WORK/export/tiny_single_bf16/config.json" ]]; then
        reference=(--reference "$WORK/export/tiny_single_bf16")
    fi
    probe "$name" 90 export "$WORK/export/$source" --run-dir "$run_dir" "${reference[@]}"
}

# ------------------------------------------------------------------------------------- the checks

echo "gpu_check: device $DEVICE, budget ${BUDGET_S} s, output $OUT_DIR, scratch $WORK" | tee -a "$LOG"

if begin env 5; then
    {
        date -u +%FT%TZ
        uname -a
        nvidia-smi 2>&1 || echo "nvidia-smi: not available"
        "$PY" -m pip list 2>/dev/null | grep -iE 'torch|transformers|deepspeed|hydra|omegaconf|accelerate|peft|safetensors|tokenizers|pydantic|numpy|triton|flash'
    } >"$OUT_DIR/env.txt" 2>&1
    probe env 60 env
fi

if begin matmul 10; then
    probe matmul 60 matmul
    MEASURED_TFLOPS=$(grep '^GPU_CHECK_RESULT ' "$STEP_LOG" | tail -n 1 | "$PY" -c 'import json, sys
line = sys.stdin.read().split(" ", 1)
print(json.loads(line[1])["figures"].get("tflops", 0) if len(line) == 2 else 0)')
fi

for strategy in single fsdp zero2 zero3; do
    train_check "tiny_${strategy}_bf16" "$strategy" 20 -- trainer.precision=bf16
done

if ((CUDA)); then
    train_check fp16_deepspeed_loss_scale zero2 20 --fp16 -- trainer.precision=fp16
    train_check fp16_torch_grad_scaler single 15 --fp16 -- trainer.precision=fp16
else
    skip_cpu fp16_deepspeed_loss_scale "DeepSpeed's CPU accelerator has no fp16"
    skip_cpu fp16_torch_grad_scaler "fp16 autocast with GradScaler is the CUDA path"
fi

begin nonfinite_fused_adamw 10 && probe nonfinite_fused_adamw 60 nonfinite

train_check packed_sft_train single 20 -- +exp=sft trainer.precision=bf16
begin packed_sft_logits_sdpa 10 && probe packed_sft_logits_sdpa 60 packed

export_check export_reload_single tiny_single_bf16 15
export_check export_reload_fsdp tiny_fsdp_bf16 15
export_check export_reload_zero3 tiny_zero3_bf16 15

train_check gradient_checkpointing single 15 -- trainer.precision=bf16 model.gradient_checkpointing=true

if ((CUDA)); then
    for strategy in single fsdp zero2 zero3; do
        bench_check "llama3_2_1b_$strategy" "$strategy" 35 150 --warmup 1 --steps 2 -- "${ONE_B[@]}"
    done
    bench_check bench_1b_seq2048 single 60 150 --vs-hf --warmup 2 --steps 8 -- "${BENCH_2048[@]}"
    bench_check bench_1b_seq4096 single 60 150 --vs-hf --warmup 2 --steps 8 -- "${BENCH_4096[@]}"
    bench_check gradient_checkpointing_1b single 30 120 --warmup 1 --steps 3 -- \
        "${BENCH_2048[@]}" model.gradient_checkpointing=true
    bench_check bench_1b_seq2048_compile single 150 240 --vs-hf --warmup 3 --steps 8 -- \
        "${BENCH_2048[@]}" model.compile=true
    bench_check bench_1b_seq4096_compile single 120 240 --vs-hf --warmup 3 --steps 8 -- \
        "${BENCH_4096[@]}" model.compile=true
else
    # Exercises bench.py --vs-hf and the JSON reading on the tiny model; MFU is against the CPU's
    # measured matmul, not a GPU's.
    bench_check bench_tiny_cpu single 40 180 --vs-hf --warmup 1 --steps 2 -- "${TINY[@]}"
    for strategy in single fsdp zero2 zero3; do
        skip_cpu "llama3_2_1b_$strategy" "the 1B shape needs a GPU"
    done
    for name in bench_1b_seq2048 bench_1b_seq4096 gradient_checkpointing_1b bench_1b_seq2048_compile \
        bench_1b_seq4096_compile; do
        skip_cpu "$name" "1B throughput on the H200 (compile on CPU would take minutes)"
    done
fi

CHECK_START=$SECONDS
"$PY" launch/gpu_check.py summary "$RESULTS" "$OUT_DIR" | tee -a "$LOG"
echo "gpu_check: $((SECONDS - START)) s; results in $OUT_DIR (scratch $WORK)"
! grep -q '"status": "FAIL"' "$RESULTS"
