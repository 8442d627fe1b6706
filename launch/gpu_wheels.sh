#!/usr/bin/env bash
# Download (or build) into .whl/ the wheels launch/gpu_check.sh needs on the offline GPU machine.
#
# The machine (one H200, Python 3.12, x86-64, no network) already has torch 2.11 (CUDA 13),
# transformers 5.17, tokenizers, safetensors, sentencepiece, peft, accelerate, numpy, pyarrow, PyYAML,
# tqdm, packaging, psutil, py-cpuinfo, msgpack, ninja, einops. It lacks what is fetched below:
#   hydra-core, omegaconf, antlr4-python3-runtime   config composition (llmtrain.config imports them)
#   deepspeed + hjson, pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions
#                                                   the zero2/zero3 checks (deepspeed's requirements
#                                                   the machine lacks; typing-extensions because
#                                                   pydantic-core needs a recent one)
# Not fetched: wandb (imported only with logger=wandb) and datasets (only for data.format=hf and
# `bench.py --prep`): none of the checks uses them. llmtrain itself travels as source (the
# checkout); gpu_check.sh puts the repository on PYTHONPATH.
#
# Versions are the ones CI's environment runs (pyproject.toml's ranges admit the machine's torch
# 2.11 and transformers 5.17: torch>=2.6,<2.15, transformers>=4.56). deepspeed and antlr4 4.9.3
# publish source only: both are pure Python here and built locally (deepspeed with no ops prebuilt;
# it JIT-builds an op only when one is used, and the checks use none).
#
# Usage, here (any machine with pip and network):  bash launch/gpu_wheels.sh
# .whl/ must be ignored, never committed: `echo /.whl/ >> .git/info/exclude` (done by this script
# when missing; a worktree shares the main checkout's exclude file).
#
# Then, from the session whose checkout is this repository, one device call (tool `run`):
#   carry:     [".whl"]
#   timeout_s: 570
#   command:   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
#              --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit;
#              bash launch/gpu_check.sh
# (the command is one line; gpu_check.sh writes into $OUT and ends inside its own 8-minute budget).
# The device tool sends the checkout the calling session started in, a helper's worktree never:
# merge this branch there and run this script in that checkout, so launch/ and .whl/ both travel.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DEST="$REPO/.whl"
PIP=(python3 -m pip)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

# Binary or pure-Python wheels published on PyPI, for CPython 3.12 on x86-64 Linux.
DOWNLOAD=(
    hydra-core==1.3.8
    omegaconf==2.3.1
    hjson==3.1.0
    pydantic==2.14.4
    pydantic-core==2.50.5
    annotated-types==0.8.0
    typing-inspection==0.4.5
    typing-extensions==4.16.0
)
# Source-only releases, built here into pure-Python wheels.
BUILD=(
    antlr4-python3-runtime==4.9.3
    deepspeed==0.19.8
)

exclude="$(git -C "$REPO" rev-parse --git-common-dir)/info/exclude"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

rm -rf "$DEST"
mkdir -p "$DEST"
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
"${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platform_args[@]}" -d "$DEST" "${DOWNLOAD[@]}"
# DS_BUILD_OPS=0: no op compiled ahead (none could be for CUDA here). No build isolation: deepspeed's
# setup.py imports torch, and an isolated build would download a CUDA torch for nothing.
DS_BUILD_OPS=0 "${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$DEST" "${BUILD[@]}"

for whl in "$DEST"/*.whl; do
    case "$(basename "$whl")" in
        *-none-any.whl | *-cp312-*manylinux*x86_64*.whl) ;;
        *) echo "unexpected wheel for a CPython 3.12 x86-64 machine: $whl" >&2; exit 1 ;;
    esac
done
ls -l "$DEST"
echo "total: $(du -sh "$DEST" | cut -f1) in $(ls "$DEST" | wc -l) wheels"
