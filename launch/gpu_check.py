"""The Python half of `launch/gpu_check.sh`: small standalone checks, and the readers of run outputs.

python launch/gpu_check.py env                       # versions and the device, as JSON
python launch/gpu_check.py matmul                    # measured dense matmul TFLOP/s (8192^3 bf16 on CUDA)
python launch/gpu_check.py run-metrics RUN_DIR --steps 3 [--fp16]
python launch/gpu_check.py bench-json FILE [--measured-tflops T]
python launch/gpu_check.py nonfinite                 # a planted NaN step under fused AdamW
python launch/gpu_check.py packed                    # packed SFT logits == each example alone (SDPA)
python launch/gpu_check.py export HF_DIR [--run-dir RUN] [--reference HF_DIR]
python launch/gpu_check.py summary RESULTS_JSONL OUT_DIR

Each check prints one line `GPU_CHECK_RESULT {"status": ..., "reason": ..., "figures": {...}}` and
exits 0 (PASS), 1 (FAIL) or 3 (SKIP); the shell script records that line. Only stable public names
are imported from llmtrain (`llmtrain.config`, the model's loss module, the strategies' optimizer
step), each inside the check that needs it: a check whose import moved reports SKIP, not a crash,
so one renamed module costs one line of the GPU run, not the run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the checks that use it: the readers of outputs start fast
    import torch

RESULT_PREFIX = "GPU_CHECK_RESULT "
EXIT = {"PASS": 0, "FAIL": 1, "SKIP": 3}
# The H200's dense bf16 tensor-core peak from NVIDIA's datasheet (llmtrain.metrics.peak agrees).
DATASHEET_BF16_FLOPS = 989e12


def report(status: str, reason: str, **figures: Any) -> int:
    print(RESULT_PREFIX + json.dumps({"status": status, "reason": reason, "figures": figures}), flush=True)
    return EXIT[status]


def device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def exact_fp32() -> None:
    """Comparisons below are of fp32 results: TF32 matmuls would differ in the 3rd digit."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


# ---------------------------------------------------------------------------------------------- env


def check_env(_: argparse.Namespace) -> int:
    import importlib.metadata as md

    import torch

    versions = {}
    for name in ("torch", "transformers", "deepspeed", "hydra-core", "omegaconf", "peft", "accelerate",
                 "safetensors", "tokenizers", "sentencepiece", "numpy", "datasets", "wandb", "flash-attn"):  # fmt: skip
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    figures: dict[str, Any] = {"python": sys.version.split()[0], "versions": versions}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        figures.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            sm_count=props.multi_processor_count,
            cuda=torch.version.cuda,
            nccl=".".join(map(str, torch.cuda.nccl.version())),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    missing = [n for n in ("torch", "transformers", "hydra-core", "omegaconf") if versions[n] is None]
    if missing:
        return report("FAIL", f"not importable: {', '.join(missing)} (install the carried wheels)", **figures)
    where = figures.get("gpu", "CPU only")
    return report(
        "PASS", f"{where}; torch {versions['torch']}, transformers {versions['transformers']}", **figures
    )


# ------------------------------------------------------------------------------------------- matmul


def check_matmul(args: argparse.Namespace) -> int:
    """Dense matmul throughput: the measured peak MFU is also given against.

    CUDA events around `repeats` products after `warmup` ones, random data (zeros run faster: the
    tensor cores draw less power and hold a higher clock). On CPU a small fp32 product stands in,
    only so the script's arithmetic is exercised.
    """
    import torch

    dev = device()
    n = args.n or (8192 if dev.type == "cuda" else 1024)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    a = torch.randn(n, n, dtype=dtype, device=dev)
    b = torch.randn(n, n, dtype=dtype, device=dev)
    for _ in range(args.warmup):
        a @ b
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(args.repeats):
            a @ b
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1e3
    else:
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            a @ b
        seconds = time.perf_counter() - t0
    tflops = 2 * n**3 * args.repeats / seconds / 1e12
    figures = {"n": n, "dtype": str(dtype).removeprefix("torch."), "tflops": round(tflops, 3)}
    if dev.type == "cuda":
        figures["share_of_datasheet"] = round(tflops * 1e12 / DATASHEET_BF16_FLOPS, 3)
    return report("PASS", f"{n}^3 {figures['dtype']} matmul: {tflops:,.4g} TFLOP/s on {dev.type}", **figures)


# -------------------------------------------------------------------------------------- run-metrics


def check_run_metrics(args: argparse.Namespace) -> int:
    """A training run's metrics.jsonl: every step logged, losses finite, no step skipped."""
    run_dir = Path(args.run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return report("FAIL", f"{path} was not written")
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steps = [r for r in lines if "loss" in r]
    vals = [r["val_loss"] for r in lines if "val_loss" in r]
    if len(steps) != args.steps:
        return report(
            "FAIL", f"{len(steps)} step lines in {path}, expected {args.steps} (trainer.log_every=1)"
        )
    last = steps[-1]
    figures = {
        "losses": [round(r["loss"], 4) for r in steps],
        "val_loss": round(vals[-1], 4) if vals else None,
        "tokens_per_sec": round(last["tokens_per_sec"]),
        "mfu": round(last["mfu"], 4),
        "memory_gib": round(last["memory_gib"], 2),
        "skipped_steps": last["skipped_steps"],
    }
    if "loss_scale" in last:
        figures["loss_scale"] = last["loss_scale"]
    if not all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in steps):
        return report("FAIL", "a non-finite loss or grad_norm was logged", **figures)
    if last["skipped_steps"] > args.allowed_skips:
        return report(
            "FAIL", f"{last['skipped_steps']} steps skipped (allowed {args.allowed_skips})", **figures
        )
    if args.fp16 and "loss_scale" not in last:
        return report("FAIL", "trainer.precision=fp16 but no loss_scale was logged", **figures)
    latest = run_dir / "checkpoints" / "latest"
    if not latest.is_file():
        return report("FAIL", f"no final checkpoint ({latest} missing)", **figures)
    figures["checkpoint"] = latest.read_text().strip()
    reason = f"{args.steps} steps, loss {steps[0]['loss']:.3f} -> {last['loss']:.3f}"
    if "loss_scale" in last:
        reason += f", loss scale {last['loss_scale']:g}, {last['skipped_steps']} skipped"
    return report("PASS", reason, **figures)


# --------------------------------------------------------------------------------------- bench-json


def _gib(n_bytes: int | None) -> float | None:
    return None if n_bytes is None else round(n_bytes / 2**30, 2)


def check_bench_json(args: argparse.Namespace) -> int:
    """`launch/bench.py --json` output: ours (and the Trainer's) tokens/s, MFU both ways, memory."""
    path = Path(args.file)
    if not path.is_file():
        return report("FAIL", f"{path} was not written")
    runs = json.loads(path.read_text())
    measured = args.measured_tflops * 1e12 if args.measured_tflops else None
    figures: dict[str, Any] = {}
    for run in runs:
        key = "trainer" if run["name"].startswith("transformers") else "ours"
        achieved = run["flops_per_token"] * run["tokens_per_sec"]
        figures[key] = {
            "name": run["name"],
            "tokens_per_sec": round(run["tokens_per_sec"]),
            "mfu_vs_peak": round(run["mfu"], 4),
            "peak_tflops": float(f"{run['peak_flops'] / 1e12:.4g}"),
            "mfu_vs_measured_matmul": round(achieved / measured, 4) if measured else None,
            "step_time_s": round(run["step_time_s"], 4),
            "step_peak_gib": _gib(run["step_peak_bytes"]),
            "peak_memory_gib": round(run["peak_memory_gib"], 2),
            "phases_s": {k: round(v, 4) for k, v in run.get("phases_s", {}).items()},
            "losses": [round(x, 4) for x in run["losses"]],
        }
    if "ours" not in figures:
        return report("FAIL", f"{path} holds no llmtrain run", **figures)
    ours = figures["ours"]
    bad = [k for k, f in figures.items() if not all(math.isfinite(x) for x in f["losses"])]
    reason = f"ours {ours['tokens_per_sec']:,} tok/s, MFU {100 * ours['mfu_vs_peak']:.1f}% of {ours['peak_tflops']:g}"
    if measured:
        reason += f" ({100 * ours['mfu_vs_measured_matmul']:.1f}% of measured {args.measured_tflops:g})"
    if "trainer" in figures:
        ratio = ours["tokens_per_sec"] / figures["trainer"]["tokens_per_sec"]
        figures["ours_over_trainer"] = round(ratio, 3)
        reason += f"; Trainer {figures['trainer']['tokens_per_sec']:,} tok/s; ours/Trainer {ratio:.2f}x"
    if bad:
        return report("FAIL", f"non-finite losses in {', '.join(bad)}; " + reason, **figures)
    return report("PASS", reason, **figures)


# ---------------------------------------------------------------------------------------- nonfinite


def check_nonfinite(_: argparse.Namespace) -> int:
    """A planted non-finite step through the strategies' own optimizer step, with fused AdamW.

    Expected: the update is skipped on the device (weights, moments and step count unchanged) and
    the host is never made to wait: with `torch.cuda.set_sync_debug_mode("error")` any synchronising
    call inside the step raises. Both step paths are run: no scaler (bf16/fp32) and GradScaler (fp16).
    A clean step after each proves the comparison is not vacuous.
    """
    import torch

    try:
        from llmtrain.strategy.torch_engine import torch_optimizer_step
    except ImportError as exc:
        return report("SKIP", f"llmtrain.strategy.torch_engine.torch_optimizer_step not importable ({exc}); "
                              "point this check at its new place")  # fmt: skip
    dev = device()
    figures: dict[str, Any] = {"device": dev.type}
    for label, scaled in (("no_scaler", False), ("grad_scaler", True)):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8)).to(dev)
        params = list(model.parameters())
        opt = torch.optim.AdamW(params, lr=1e-2, fused=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        scaler = torch.amp.GradScaler(dev.type, enabled=scaled)
        x = torch.randn(16, 64, device=dev)

        def backward(poison: bool, model=model, scaler=scaler, x=x) -> None:
            loss = model(x).square().mean()
            if poison:
                loss = loss * float("nan")
            scaler.scale(loss).backward() if scaler.is_enabled() else loss.backward()

        backward(False)
        torch_optimizer_step(params, opt, sched, scaler, grad_clip=1.0)  # states exist from here on
        before = [t.detach().clone() for t in params]
        states = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
        backward(True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            result = torch_optimizer_step(params, opt, sched, scaler, grad_clip=1.0)
        except RuntimeError as exc:
            return report("FAIL", f"{label}: the skipped step synchronised with the host: {exc}", **figures)
        finally:
            if dev.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
        skipped = bool(result.skipped)
        weights_same = all(torch.equal(a, b) for a, b in zip(before, params))
        states_same = all(
            torch.equal(v, opt.state[p][k]) for p, s in zip(params, states) for k, v in s.items()
        )
        backward(False)
        torch_optimizer_step(params, opt, sched, scaler, grad_clip=1.0)
        moved = any(not torch.equal(a, b) for a, b in zip(before, params))
        figures[label] = {
            "reported_skipped": skipped,
            "weights_unchanged": weights_same,
            "optimizer_state_unchanged": states_same,
            "clean_step_moved_weights": moved,
            "host_syncs_in_step": 0 if dev.type == "cuda" else "not counted on CPU",
        }
        if not (skipped and weights_same and states_same and moved):
            return report("FAIL", f"{label}: {figures[label]}", **figures)
    sync_note = (
        "no host sync (sync debug mode 'error')" if dev.type == "cuda" else "syncs not countable on CPU"
    )
    return report("PASS", f"planted NaN step skipped on {dev.type}, weights and AdamW state unchanged; {sync_note}",
                  **figures)  # fmt: skip


# ------------------------------------------------------------------------------------------- packed


def check_packed(_: argparse.Namespace) -> int:
    """Packed rows with document masking compute what each example computes alone (SDPA path).

    The same property tests/data/test_packing.py checks on CPU, rebuilt from plain tensors (position
    ids restarting per example, document ids, -1 padding) so it needs no data-pipeline module. fp32
    must agree to float tolerance; under bf16 autocast the packed and the lone rows take different
    SDPA kernels (a masked one and the causal one), so the test is that their difference is far
    below the difference a leak makes (the same row without document masking).
    """
    import torch

    try:
        from llmtrain.config import ModelConfig
        from llmtrain.model.build import build_model
        from llmtrain.model.loss import CausalLMLoss
    except ImportError as exc:
        return report("SKIP", f"llmtrain's model modules not importable ({exc})")
    exact_fp32()
    dev = device()
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
                      attn_implementation="sdpa")  # fmt: skip
    model = build_model(cfg, 300, dev).eval()
    masked = CausalLMLoss(model, document_masking=True).eval()
    plain = CausalLMLoss(model, document_masking=False).eval()
    gen = torch.Generator().manual_seed(1)
    lengths = (17, 40, 9, 25)
    examples = [torch.randint(0, 259, (n,), generator=gen) for n in lengths]
    pad = 8
    ids = torch.cat([*examples, torch.zeros(pad, dtype=torch.long)])[None].to(dev)
    pos = torch.cat([*(torch.arange(n) for n in lengths), torch.arange(pad)])[None].to(dev)
    docs = torch.cat([*(torch.full((n,), i) for i, n in enumerate(lengths)), torch.full((pad,), -1)])
    docs = docs[None].to(dev)
    figures: dict[str, Any] = {"device": dev.type, "lengths": list(lengths)}
    dtypes = [("fp32", None)] + ([("bf16", torch.bfloat16)] if dev.type == "cuda" else [])
    for label, dtype in dtypes:
        ctx = torch.autocast(dev.type, dtype=dtype) if dtype else torch.autocast(dev.type, enabled=False)
        with torch.no_grad(), ctx:
            packed = masked(ids, None, pos, docs).float()
            leaky = plain(ids, None, None).float()
            diff = leak = 0.0
            start = 0
            for ex in examples:
                n = len(ex)
                alone = masked(ex[None].to(dev), None, torch.arange(n, device=dev)[None]).float()
                diff = max(diff, (packed[0, start : start + n] - alone[0]).abs().max().item())
                if start:  # the first example sees nothing before it, leak or not
                    leak = max(leak, (leaky[0, start : start + n] - alone[0]).abs().max().item())
                start += n
        finite = bool(torch.isfinite(packed).all())
        figures[label] = {"max_abs_diff_packed_vs_alone": diff, "max_abs_diff_without_masking": leak,
                          "finite_including_padding": finite}  # fmt: skip
        ok = finite and (diff <= 1e-4 if dtype is None else diff < 0.1 * leak)
        if not ok:
            return report("FAIL", f"{label}: packed vs alone differ by {diff:.3g} (a leak makes {leak:.3g}); "
                                  f"finite={finite}", **figures)  # fmt: skip
    summary = ", ".join(
        f"{k} max abs diff {figures[k]['max_abs_diff_packed_vs_alone']:.2g}" for k, _ in dtypes
    )
    return report("PASS", f"packed == alone on {dev.type} SDPA ({summary}; leak control "
                          f"{figures['fp32']['max_abs_diff_without_masking']:.2g})", **figures)  # fmt: skip


# ------------------------------------------------------------------------------------------- export


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    import torch

    with torch.no_grad():
        return model(input_ids=ids.to(next(model.parameters()).device)).logits.float().cpu()


def check_export(args: argparse.Namespace) -> int:
    """An exported folder reloads with transformers and gives the trained weights' logits.

    Reference, where the run is a `single` one: a model built from the exported config.json with
    the checkpoint's own weight file loaded into it, on the same device (must be bit-identical, as
    tests/checkpoint/test_export.py asserts on CPU). Always: the reload on CUDA against the reload
    on CPU in fp32, and, with `--reference`, the largest logit difference against another export
    (the same seed and data under another strategy: reported, not asserted).
    """
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    exact_fp32()
    dev = device()
    hf_dir = Path(args.hf_dir)
    if not (hf_dir / "config.json").is_file():
        return report("FAIL", f"{hf_dir}/config.json missing: the export did not write a Hugging Face folder")
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(dev).eval()
    ids = torch.randint(
        0, min(model.config.vocab_size, 259), (1, 48), generator=torch.Generator().manual_seed(0)
    )
    logits = _logits(model, ids)
    figures: dict[str, Any] = {"device": dev.type, "finite": bool(torch.isfinite(logits).all())}
    if not figures["finite"]:
        return report("FAIL", "the reloaded model's logits are not finite", **figures)
    checks = []
    if args.run_dir:
        run_dir = Path(args.run_dir)
        step = (run_dir / "checkpoints" / "latest").read_text().strip()
        weights = run_dir / "checkpoints" / step / "model" / "model.safetensors"
        if weights.is_file():
            ref = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(hf_dir), dtype=torch.float32)
            ref.load_state_dict(load_file(weights), strict=False)
            ref.tie_weights()
            d = (_logits(ref.to(dev).eval(), ids) - logits).abs().max().item()
            figures["max_abs_diff_vs_checkpoint_weights"] = d
            checks.append(("checkpoint weights", d, 0.0))
        else:
            figures["checkpoint_weights"] = f"not compared: {weights} absent (sharded strategy layout)"
    if dev.type == "cuda":
        cpu = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        d = (_logits(cpu, ids) - logits).abs().max().item()
        figures["max_abs_diff_cuda_vs_cpu"] = d
        checks.append(("CPU reload", d, 1e-3))
    if args.reference:
        other = AutoModelForCausalLM.from_pretrained(args.reference, dtype=torch.float32).to(dev).eval()
        figures["max_abs_diff_vs_reference_export"] = (_logits(other, ids) - logits).abs().max().item()
    failed = [f"{name}: max abs diff {d:.3g} > {tol:g}" for name, d, tol in checks if d > tol]
    if failed:
        return report("FAIL", "; ".join(failed), **figures)
    done = ", ".join(f"{name} max abs diff {d:.2g}" for name, d, _ in checks) or "finite logits"
    if "max_abs_diff_vs_reference_export" in figures:
        done += f"; vs the single run's export max abs diff {figures['max_abs_diff_vs_reference_export']:.2g} (reported)"
    return report("PASS", f"reloaded with transformers on {dev.type}: {done}", **figures)


# ------------------------------------------------------------------------------------------ summary


def write_summary(args: argparse.Namespace) -> int:
    """results.json and summary.md from the records the shell script appended, one JSON per line."""
    records = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()]
    out = Path(args.out_dir)
    (out / "results.json").write_text(json.dumps(records, indent=2) + "\n")
    counts = {s: sum(r["status"] == s for r in records) for s in EXIT}
    lines = [
        "# gpu_check summary",
        "",
        f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP",
        "",
        "| check | status | seconds | result |",
        "| --- | --- | --- | --- |",
    ]
    for r in records:
        reason = r["reason"].replace("|", "/").replace("\n", " ")
        lines.append(f"| {r['check']} | {r['status']} | {r['seconds']} | {reason} |")
    bench = [r for r in records if r["status"] == "PASS" and "ours" in r["figures"]]
    if bench:
        lines += [
            "",
            "| run | tokens/s ours | MFU vs datasheet | MFU vs measured | step peak GiB | tokens/s Trainer "
            "| ours/Trainer | Trainer step peak GiB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in bench:
            o, t = r["figures"]["ours"], r["figures"].get("trainer", {})
            mm = o["mfu_vs_measured_matmul"]
            lines.append(
                f"| {r['check']} | {o['tokens_per_sec']:,} | {100 * o['mfu_vs_peak']:.1f}% | "
                f"{'-' if mm is None else f'{100 * mm:.1f}%'} | {o['step_peak_gib']} | "
                f"{t.get('tokens_per_sec', '-')} | {r['figures'].get('ours_over_trainer', '-')} | "
                f"{t.get('step_peak_gib', '-')} |"
            )
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="check", required=True)
    sub.add_parser("env").set_defaults(fn=check_env)
    p = sub.add_parser("matmul")
    p.add_argument("--n", type=int, default=0, help="matrix size (0: 8192 on CUDA, 1024 on CPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.set_defaults(fn=check_matmul)
    p = sub.add_parser("run-metrics")
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--fp16", action="store_true", help="expect a logged loss scale")
    p.add_argument("--allowed-skips", type=int, default=0, help="fp16: the first steps may overflow")
    p.set_defaults(fn=check_run_metrics)
    p = sub.add_parser("bench-json")
    p.add_argument("file")
    p.add_argument("--measured-tflops", type=float, default=0.0)
    p.set_defaults(fn=check_bench_json)
    sub.add_parser("nonfinite").set_defaults(fn=check_nonfinite)
    sub.add_parser("packed").set_defaults(fn=check_packed)
    p = sub.add_parser("export")
    p.add_argument("hf_dir")
    p.add_argument("--run-dir", help="the run exported: its single-strategy weight file is the reference")
    p.add_argument("--reference", help="another export to report the logit difference against")
    p.set_defaults(fn=check_export)
    p = sub.add_parser("summary")
    p.add_argument("results")
    p.add_argument("out_dir")
    p.set_defaults(fn=write_summary)
    args = parser.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
