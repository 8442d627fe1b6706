"""Which SFT examples share a training sequence: a packing plan computed from example lengths alone.

Why a plan fixed for the run (rather than re-packed per epoch): the sampler then sees a fixed list
of rows, so `GlobalBatchSampler` shuffles rows per epoch exactly as it shuffles pretraining windows,
the resume state stays the step counter, and every rank computes the identical plan from the same
lengths and seed without talking to the others.

The plan is first-fit-decreasing inside buffers of a shuffled order: shuffling first keeps rows
from being grouped by source order, sorting inside a buffer gets first-fit close to optimal, and
the bounded buffer keeps the cost linear in the number of examples.
"""

from __future__ import annotations

import numpy as np

PACKING_BUFFER = 4096


def pack_examples(
    lengths: np.ndarray, capacity: int, seed: int, buffer: int = PACKING_BUFFER
) -> list[np.ndarray]:
    """Rows of example indices whose `lengths` sum to at most `capacity` each.

    `lengths` are the tokens each example occupies in a row (its input length); every one must be
    in 1..capacity (truncation guarantees it).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.max() > capacity or lengths.min() < 1):
        raise ValueError(f"example lengths must be in 1..{capacity}, got {lengths.min()}..{lengths.max()}")
    order = np.random.default_rng([seed, len(lengths)]).permutation(len(lengths))
    rows: list[np.ndarray] = []
    for start in range(0, len(order), buffer):
        chunk = order[start : start + buffer]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        free = np.empty(0, dtype=np.int64)
        members: list[list[int]] = []
        for idx in chunk:
            need = lengths[idx]
            fits = np.flatnonzero(free >= need)
            if len(fits):
                b = int(fits[0])
                free[b] -= need
                members[b].append(int(idx))
            else:
                free = np.append(free, capacity - need)
                members.append([int(idx)])
        rows += [np.array(m, dtype=np.int64) for m in members]
    return rows


def one_per_row(num_examples: int) -> list[np.ndarray]:
    """The unpacked plan: every example alone in its row (padded at batching time)."""
    return [np.array([i], dtype=np.int64) for i in range(num_examples)]


def packing_efficiency(rows: list[np.ndarray], lengths: np.ndarray, capacity: int) -> float:
    """Share of the rows' `capacity` slots that hold real tokens (1.0: no padding at all)."""
    if not rows:
        return 0.0
    used = sum(int(np.asarray(lengths)[r].sum()) for r in rows)
    return used / (len(rows) * capacity)
