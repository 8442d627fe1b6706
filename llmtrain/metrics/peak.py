"""Peak FLOP/s of the device, the denominator of MFU.

GPUs: the vendor's dense bf16 tensor-core figure (what MFU conventionally refers to). CPUs have no
such datasheet figure we can rely on, so we measure a matmul. One timing taken while the machine is
busy (another run starting, a test suite beside it) underestimates the peak and MFU then reads
above 100%, so the measurement is the best of several rounds, and the best rate ever measured on
this machine (same processor, thread count, dtype and torch) is kept in a small cache file and
used whenever it is higher.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from pathlib import Path

import torch

# Dense (no sparsity) bf16 peak FLOP/s, from the vendors' datasheets.
_GPU_BF16_PEAK = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
}


CACHE_ENV = "LLMTRAIN_PEAK_CACHE"


def _cache_path() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmtrain" / "peak_flops.json"
    return Path(os.environ.get(CACHE_ENV, default))


def _machine_key(device_type: str, dtype: torch.dtype, size: int) -> str:
    cpu = platform.processor() or platform.machine()
    if device_type == "cuda":
        cpu = torch.cuda.get_device_name()
    return f"{device_type}|{cpu}|threads={torch.get_num_threads()}|{dtype}|{size}|torch={torch.__version__}"


def _best_known(key: str, measured: float) -> float:
    """max(measured, the cached best for `key`), updating the cache; a cache that cannot be read
    or written only means no memory across runs."""
    path = _cache_path()
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    best = max(measured, float(cache.get(key, 0.0)))
    if best > cache.get(key, 0.0):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps({**cache, key: best}, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass
    return best


@functools.cache
def measured_matmul_flops(
    device_type: str, dtype: torch.dtype, size: int = 1024, repeats: int = 8, rounds: int = 5
) -> float:
    """The best matmul rate of `rounds` timings (and of earlier runs on this machine)."""
    a = torch.randn(size, size, dtype=dtype, device=device_type)
    b = torch.randn(size, size, dtype=dtype, device=device_type)
    a @ b  # warm-up (thread pool start, kernel selection)
    fastest = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        if device_type == "cuda":
            torch.cuda.synchronize()
        fastest = min(fastest, time.perf_counter() - start)
    return _best_known(_machine_key(device_type, dtype, size), 2 * size**3 * repeats / fastest)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Peak FLOP/s for MFU. On CPU: the measured fp32 matmul rate, whatever the training dtype,
    since half-precision matmuls are emulated on most CPUs (slow to measure, and MFU > 100%)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in _GPU_BF16_PEAK.items():
            if key in name:
                return flops
        return measured_matmul_flops("cuda", torch.bfloat16, size=8192, repeats=20)
    return measured_matmul_flops(device.type, torch.float32)
