"""Which samples each rank trains on at each step, defined by (seed, step) alone.

The order is fixed per *global* batch, OLMo-core style: epoch e is the permutation
`default_rng([seed, e]).permutation(num_samples)`, step s is global batch `s % steps_per_epoch` of
epoch `s // steps_per_epoch`, and each data-parallel rank takes its contiguous slice of that batch.
So the resume state is one integer (the next step), and a run resumed on a different number of
ranks trains on exactly the same samples per step as the uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from llmtrain.data.errors import DataError


class GlobalBatchSampler:
    """Batch sampler yielding this rank's micro-batches (lists of sample indices) forever.

    Each epoch drops its last `dropped_per_epoch` samples (the remainder after whole global
    batches); a different permutation next epoch drops different ones.
    """

    def __init__(
        self,
        num_samples: int,
        global_batch_size: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
        seed: int,
        start_step: int = 0,
    ) -> None:
        if global_batch_size % dp_size:
            raise DataError(
                f"trainer.global_batch_size={global_batch_size} is not divisible by the data-parallel size {dp_size}"
            )
        per_rank = global_batch_size // dp_size
        if per_rank % micro_batch_size:
            raise DataError(
                f"trainer.global_batch_size={global_batch_size} / data-parallel size {dp_size} = {per_rank} "
                f"samples per rank, not a multiple of trainer.micro_batch_size={micro_batch_size}"
            )
        if num_samples < global_batch_size:
            raise DataError(
                f"trainer.global_batch_size={global_batch_size} exceeds the {num_samples} training samples; "
                "use more data, a smaller trainer.global_batch_size or a smaller data.seq_len"
            )
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank={dp_rank} outside data-parallel size {dp_size}")
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.seed = seed
        self.start_step = start_step
        self.steps_per_epoch = num_samples // global_batch_size
        self.dropped_per_epoch = num_samples - self.steps_per_epoch * global_batch_size
        self._epoch: int | None = None
        self._perm: np.ndarray | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            self._epoch = epoch
        assert self._perm is not None
        return self._perm

    def global_batch(self, step: int) -> np.ndarray:
        """All ranks' sample indices for `step`, in order."""
        epoch, batch = divmod(step, self.steps_per_epoch)
        start = batch * self.global_batch_size
        return self._permutation(epoch)[start : start + self.global_batch_size]

    def indices_for_step(self, step: int) -> list[list[int]]:
        """This rank's micro-batches for `step`."""
        per_rank = self.global_batch_size // self.dp_size
        mine = self.global_batch(step)[self.dp_rank * per_rank : (self.dp_rank + 1) * per_rank]
        mbs = self.micro_batch_size
        return [mine[i : i + mbs].tolist() for i in range(0, per_rank, mbs)]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            yield from self.indices_for_step(step)
            step += 1
