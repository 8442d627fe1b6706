"""Global batches drawn from several sources at fixed token shares, defined by (seed, step) alone.

Every sample is one window of `seq_len` tokens, so a share of windows is a share of tokens: the
unit of the quota is the window. Steps are grouped in blocks of `block_steps`; block `b` holds
`block_steps * global_batch_size` slots, and each source gets `round(weight * slots)` of them by
largest remainder (the quotas sum to the slots exactly; ties go to the earlier source). So over
every block the token share of each source is its weight to within one window, and it is exact
whenever `weight * slots` is an integer (0.5/0.3/0.2 with 80 slots: 40/24/16).

Inside a block the slots are shuffled with `default_rng([seed, b])`; the k-th draw of a source
takes position `k mod n` of that source's permutation for epoch `k // n` (`n` its window count,
seeded by the source's name, so adding a source does not reorder another's samples). A step's
global batch therefore depends on (seed, step) and the quotas of earlier blocks only, which are
plain integers recomputed on start: resume and a change of world size see the same batches.

`max_epochs`: a source may be drawn `max_epochs * n` times. The block that reaches the limit gives
it only what is left, the other sources share the freed slots by their weights, and later blocks
leave it out (renormalised). The event is logged once, when that block is first planned.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass

import numpy as np

from llmtrain.data.errors import DataError
from llmtrain.data.sampler import GlobalBatchSampler

log = logging.getLogger("llmtrain")


@dataclass(frozen=True)
class MixtureSource:
    name: str
    weight: float
    num_windows: int
    max_epochs: float | None = None

    @property
    def max_draws(self) -> float:
        return math.inf if self.max_epochs is None else math.floor(self.max_epochs * self.num_windows)


def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to `weights` summing to `total` (Hamilton's method; ties: lowest index)."""
    exact = weights / weights.sum() * total
    quotas = np.floor(exact).astype(np.int64)
    short = total - int(quotas.sum())
    # Stable sort on the negated remainder: equal remainders keep source order.
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[:short]] += 1
    return quotas


class MixturePlan:
    """Per-block quotas of each source and the draws made before each block, planned lazily."""

    def __init__(
        self, sources: list[MixtureSource], global_batch_size: int, block_steps: int, log_events: bool = True
    ) -> None:
        if not sources or sum(s.weight for s in sources) <= 0:
            raise DataError("data.sources: no source with a weight > 0")
        for s in sources:
            if s.weight > 0 and s.num_windows == 0:
                raise DataError(
                    f"data.sources ({s.name}): no training window of data.seq_len tokens; add data or "
                    "lower data.seq_len"
                )
        self.sources = sources
        self.global_batch_size = global_batch_size
        self.block_steps = block_steps
        self.slots = block_steps * global_batch_size
        self.log_events = log_events
        self._quotas: list[np.ndarray] = []  # block -> draws per source
        self._before: list[np.ndarray] = [np.zeros(len(sources), dtype=np.int64)]  # block -> draws before it

    def quotas(self, block: int) -> np.ndarray:
        while len(self._quotas) <= block:
            self._plan_next()
        return self._quotas[block]

    def draws_before(self, block: int) -> np.ndarray:
        self.quotas(block)
        return self._before[block]

    def _plan_next(self) -> None:
        block = len(self._quotas)
        before = self._before[block]
        left = np.array([s.max_draws for s in self.sources], dtype=np.float64) - before
        weights = np.array([s.weight for s in self.sources], dtype=np.float64)
        quotas = np.zeros(len(self.sources), dtype=np.int64)
        active = (weights > 0) & (left > 0)
        slots = self.slots
        # Cap the sources whose remaining draws fall short of their quota, then share the rest
        # among the others; repeat, since a larger share can push another source over its limit.
        while slots > 0:
            if not active.any():
                raise DataError(
                    f"every source of data.sources reached its max_epochs by step {block * self.block_steps} "
                    "(draws: " + ", ".join(f"{s.name} {int(b)}" for s, b in zip(self.sources, before)) + "); "
                    "raise max_epochs, add data or lower trainer.max_steps"
                )
            share = np.zeros_like(quotas)
            share[active] = largest_remainder(weights[active], slots)
            over = active & (share > left - quotas)
            if not over.any():
                quotas += share
                break
            for i in np.flatnonzero(over):
                quotas[i] = int(left[i])
                slots -= int(left[i])
                active[i] = False
                if self.log_events:
                    self._log_exhausted(i, block)
        self._quotas.append(quotas)
        self._before.append(before + quotas)

    def _log_exhausted(self, i: int, block: int) -> None:
        src = self.sources[i]
        rest = [
            s
            for j, s in enumerate(self.sources)
            if j != i and s.weight > 0 and self._before[block][j] < s.max_draws
        ]
        total = sum(s.weight for s in rest) or 1.0
        log.info(
            "data mixture: source %s reaches max_epochs=%g (%d windows drawn) in steps %d-%d; "
            "from then on the others share the batch: %s",
            src.name,
            src.max_epochs,
            int(src.max_draws),
            block * self.block_steps,
            (block + 1) * self.block_steps - 1,
            ", ".join(f"{s.name} {s.weight / total:.3f}" for s in rest) or "none",
        )

    def block_order(self, block: int, seed: int) -> np.ndarray:
        """The source of every slot of `block`, shuffled."""
        labels = np.repeat(np.arange(len(self.sources)), self.quotas(block))
        return np.random.default_rng([seed, block]).permutation(labels)

    def windows_drawn(self, step: int, seed: int) -> np.ndarray:
        """Per source, the windows drawn in steps [0, step): what `tokens/<source>` reports."""
        block, offset = divmod(step, self.block_steps)
        drawn = self.draws_before(block).copy()
        if offset:
            head = self.block_order(block, seed)[: offset * self.global_batch_size]
            drawn += np.bincount(head, minlength=len(self.sources))
        return drawn


class MixtureSampler(GlobalBatchSampler):
    """`GlobalBatchSampler` over the concatenated windows of several sources (`MixtureWindows`):
    same per-rank slicing, global batches from `MixturePlan`."""

    def __init__(
        self,
        sources: list[MixtureSource],
        global_batch_size: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
        seed: int,
        start_step: int = 0,
        block_steps: int = 10,
    ) -> None:
        super().__init__(
            sum(s.num_windows for s in sources),
            global_batch_size,
            micro_batch_size,
            dp_rank,
            dp_size,
            seed,
            start_step,
        )
        self.plan = MixturePlan(sources, global_batch_size, block_steps, log_events=dp_rank == 0)
        self.offsets = np.concatenate([[0], np.cumsum([s.num_windows for s in sources])]).astype(np.int64)
        self._seeds = [zlib.crc32(s.name.encode()) for s in sources]
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _source_perm(self, i: int, epoch: int) -> np.ndarray:
        key = (i, epoch)
        if key not in self._perms:
            if len(self._perms) > 2 * len(self.plan.sources):
                self._perms.clear()
            n = self.plan.sources[i].num_windows
            self._perms[key] = np.random.default_rng([self.seed, self._seeds[i], epoch]).permutation(n)
        return self._perms[key]

    def global_batch(self, step: int) -> np.ndarray:
        plan, b = self.plan, self.global_batch_size
        block, offset = divmod(step, plan.block_steps)
        order = plan.block_order(block, self.seed)
        mine = order[offset * b : (offset + 1) * b]
        # k-th draw of each source in this step: draws before the block + earlier slots of the block.
        drawn = plan.draws_before(block) + np.bincount(order[: offset * b], minlength=len(plan.sources))
        out = np.empty(b, dtype=np.int64)
        for i in np.unique(mine):
            where = np.flatnonzero(mine == i)
            draws = drawn[i] + np.arange(len(where))
            n = plan.sources[i].num_windows
            local = np.empty(len(where), dtype=np.int64)
            for epoch in np.unique(draws // n):
                sel = draws // n == epoch
                local[sel] = self._source_perm(int(i), int(epoch))[draws[sel] % n]
            out[where] = self.offsets[i] + local
        return out

    def windows_drawn(self, step: int) -> dict[str, int]:
        drawn = self.plan.windows_drawn(step, self.seed)
        return {s.name: int(d) for s, d in zip(self.plan.sources, drawn)}
