"""What the config's dtype names mean in torch, and the one rule for the dtype matmuls run in."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_MIXED = {"bf16": torch.bfloat16, "fp16": torch.float16}


def mixed_precision_dtype(precision: str) -> torch.dtype | None:
    """The low-precision dtype of `trainer.precision` (bf16/fp16), None for fp32."""
    return _MIXED.get(precision)


def compute_dtype(precision: str, param_dtype: str) -> torch.dtype:
    """The dtype the matmuls run in: the mixed-precision dtype, else the parameters' own
    (`model.dtype`). MFU's peak is taken for this dtype."""
    return mixed_precision_dtype(precision) or DTYPES[param_dtype]
