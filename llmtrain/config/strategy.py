"""Schema of `strategy.*` (how the model is distributed) and `dist.*` (how ranks talk).

Each engine's keys live in its own section (`strategy.deepspeed.*`, `strategy.fsdp.*`), so a user
reads which keys apply to the engine they picked; `strategy.name` chooses the engine. Checks that
depend only on config (a ZeRO stage that contradicts the name, parameter offload below stage 3)
are made here, before any work, instead of inside the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmtrain.config.checks import one_of, require

PARAM_DTYPES = ("float32", "bfloat16", "float16")
STRATEGIES = ("single", "zero1", "zero2", "zero3", "zero3_offload", "fsdp")
# The ZeRO stage each DeepSpeed strategy name stands for.
ZERO_STAGES = {"zero1": 1, "zero2": 2, "zero3": 3, "zero3_offload": 3}


@dataclass
class DeepSpeedConfig:
    """DeepSpeed keys we generate the JSON config from; `config` is merged over it for the rest."""

    # 0: the stage `strategy.name` names. Any other value may only agree with it.
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    # Elements per gradient-reduction bucket. DeepSpeed's own default (5e8) costs ZeRO-1/2 with
    # overlap_comm two buffers of that many elements whatever the model's size: +3.4 GiB a rank at
    # fp32 on a 9M-parameter model, for no measured speed (docs/performance.md). 5e7 is the order of
    # Megatron-LM's gradient buckets (4e7).
    reduce_bucket_size: int = 50_000_000
    # Deep-merged over the generated DeepSpeed JSON: any DeepSpeed key, e.g.
    # `+strategy.deepspeed.config.zero_optimization.stage3_max_live_parameters=1e9`.
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class FSDPConfig:
    """PyTorch FSDP2 (`fully_shard`) keys."""

    # Reshard parameters after forward (ZeRO-3 like) or keep them until backward (ZeRO-2 like).
    reshard_after_forward: bool = True
    cpu_offload: bool = False
    # Dtype gradients are reduced in under mixed precision.
    reduce_dtype: str = "float32"

    def __post_init__(self) -> None:
        one_of(self.reduce_dtype, "strategy.fsdp.reduce_dtype", PARAM_DTYPES)


@dataclass
class StrategyConfig:
    """How the model is distributed. `name` picks the implementation; its section tunes it."""

    name: str = "single"
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)

    def __post_init__(self) -> None:
        one_of(self.name, "strategy.name", STRATEGIES)
        ds = self.deepspeed
        require(
            0 <= ds.zero_stage <= 3, "strategy.deepspeed.zero_stage", f"must be 0..3, got {ds.zero_stage}"
        )
        if self.name in ZERO_STAGES:
            stage = ZERO_STAGES[self.name]
            require(
                ds.zero_stage in (0, stage),
                "strategy.deepspeed.zero_stage",
                f"strategy.deepspeed.zero_stage={ds.zero_stage} contradicts strategy.name={self.name} "
                f"(stage {stage}); pick the stage with strategy=zero1|zero2|zero3",
            )
            if self.name == "zero3_offload":  # the name promises both offloads
                ds.offload_optimizer = ds.offload_params = True
            if ds.offload_params:
                require(
                    stage == 3,
                    "strategy.deepspeed.offload_params",
                    f"needs ZeRO stage 3, got strategy.name={self.name}",
                )

    @property
    def zero_stage(self) -> int | None:
        """The ZeRO stage of a DeepSpeed strategy; None for the others."""
        return ZERO_STAGES.get(self.name)

    @property
    def is_deepspeed(self) -> bool:
        return self.name in ZERO_STAGES


@dataclass
class ParallelConfig:
    """Degrees of the device mesh beyond data parallelism (1 = off). The data-parallel shard degree
    is what is left of the world size: world = dp_replicate × dp_shard × sp × tp."""

    # Tensor parallel (DTensor, strategy=fsdp): attention and MLP projections split over `tp` ranks
    # of a node (column-wise q/k/v/gate/up, row-wise o/down); embeddings, norms and lm_head replicated.
    tp: int = 1
    # Sequence parallel (Ulysses; strategy=fsdp, or zero1|zero2|zero3 through DeepSpeed's
    # UlyssesSPAttentionHF): each of `sp` ranks holds a contiguous slice of every sequence; around
    # attention two all-to-alls swap the sequence slices for head slices. With `tp` (FSDP only)
    # Ulysses splits each tensor-parallel rank's heads (num_heads / tp) over `sp`.
    sp: int = 1
    # HSDP (strategy=fsdp): parameters sharded within each of `dp_replicate` groups, replicated across.
    dp_replicate: int = 1

    def __post_init__(self) -> None:
        for key in ("tp", "sp", "dp_replicate"):
            require(getattr(self, key) >= 1, f"parallel.{key}", f"must be >= 1, got {getattr(self, key)}")


@dataclass
class DistConfig:
    """The process group every strategy runs on."""

    # Collective timeout: a dead rank makes the others fail after this long instead of hanging.
    timeout_s: int = 600

    def __post_init__(self) -> None:
        require(self.timeout_s > 0, "dist.timeout_s", f"must be > 0, got {self.timeout_s}")
