"""Peak FLOP/s of the device, the denominator of MFU.

GPUs: the vendor's dense bf16 tensor-core figure (what MFU conventionally refers to). CPUs have no
such datasheet figure we can rely on, so we measure a large matmul in the training dtype once.
"""

from __future__ import annotations

import functools
import time

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


@functools.cache
def measured_matmul_flops(device_type: str, dtype: torch.dtype, size: int = 1024, repeats: int = 8) -> float:
    a = torch.randn(size, size, dtype=dtype, device=device_type)
    b = torch.randn(size, size, dtype=dtype, device=device_type)
    a @ b  # warm-up (thread pool start, kernel selection)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device_type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


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
