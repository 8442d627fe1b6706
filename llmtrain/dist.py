"""Who am I in the job: rank and world discovery, the process groups and device mesh (made here and
nowhere else), and the one rank-0 guard.

Launchers describe the job in environment variables: torchrun and the deepspeed launcher set
RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; `srun` sets SLURM_PROCID/SLURM_NTASKS/
SLURM_LOCALID (llmtrain.cluster fills MASTER_ADDR/PORT from the node list). Everything that must
happen once per job (files, W&B, prints) goes through `is_main_process()`.
"""

from __future__ import annotations

import datetime
import os
import pickle
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

from llmtrain.cluster.slurm import fill_rendezvous_env, in_srun_step
from llmtrain.config import ConfigError, ParallelConfig


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return default


def env_ranks() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the launcher's environment; (0, 1, 0) when alone."""
    # SLURM's task variables describe this process only inside an srun step (see in_srun_step).
    slurm = in_srun_step()
    rank = _env_int("RANK", *(["SLURM_PROCID"] if slurm else []), default=0)
    world = _env_int("WORLD_SIZE", *(["SLURM_NTASKS"] if slurm else []), default=1)
    local = _env_int("LOCAL_RANK", *(["SLURM_LOCALID"] if slurm else []), default=0)
    return rank, world, local


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("trainer.device=cuda but torch sees no CUDA device")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_s: int = 600) -> DistInfo:
    """Join the job's process group (once); a lone process needs none.

    The timeout bounds every collective, so a dead rank makes the others fail with an error
    instead of hanging while the job holds its nodes.
    """
    rank, world, local = env_ranks()
    dev = pick_device(device, local)
    if world > 1 and not tdist.is_initialized():
        fill_rendezvous_env()  # `srun python ...`: no launcher set MASTER_ADDR/PORT
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world))
        os.environ.setdefault("LOCAL_RANK", str(local))
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if missing:
            raise RuntimeError(
                f"WORLD_SIZE={world} but {', '.join(missing)} is not set: launch with torchrun, deepspeed "
                "or srun (under SLURM llmtrain.cluster sets them), or export them yourself"
            )
        tdist.init_process_group(
            backend=_backend(dev),
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def ensure_process_group(device: torch.device, timeout_s: int) -> None:
    """A process group even for a lone process: FSDP2, DCP and DeepSpeed need one.

    A job launched with several ranks has its group from `init_distributed` already. A lone process
    (`python launch/train.py strategy=fsdp`, one process resuming a sharded run) gets a 1-rank group
    on an in-memory store: no free port, no MPI discovery. The variables are the ones a launcher
    would have set, which DeepSpeed's engine insists on reading.
    """
    if is_distributed():
        return
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    tdist.init_process_group(
        _backend(device),
        store=tdist.HashStore(),
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


@dataclass(frozen=True)
class ParallelDims:
    """How the world splits: world = dp_replicate × dp_shard × sp × tp, ranks laid out with tp
    fastest, then sp (a tensor- or sequence-parallel group is consecutive ranks, i.e. GPUs of one
    node)."""

    dp_replicate: int
    dp_shard: int
    tp: int
    sp: int = 1

    @classmethod
    def from_config(cls, parallel: ParallelConfig, world_size: int) -> ParallelDims:
        fixed = parallel.dp_replicate * parallel.sp * parallel.tp
        if world_size % fixed:
            raise ConfigError(
                f"world size {world_size} is not divisible by parallel.dp_replicate={parallel.dp_replicate} × "
                f"parallel.sp={parallel.sp} × parallel.tp={parallel.tp} = {fixed}; launch a multiple of "
                f"{fixed} ranks or lower the degrees"
            )
        return cls(parallel.dp_replicate, world_size // fixed, parallel.tp, parallel.sp)

    @property
    def dp(self) -> int:
        """Data-parallel size: how many different batches a step trains on (sequence-parallel
        peers share theirs)."""
        return self.dp_replicate * self.dp_shard

    @property
    def fsdp(self) -> int:
        """Ranks FSDP2 shards and reduces gradients over: the data-parallel and sequence-parallel
        ranks (each sequence-parallel rank computes gradients from its own slice of the tokens)."""
        return self.dp * self.sp

    def dp_rank(self, rank: int) -> int:
        return rank // (self.sp * self.tp)

    def sp_rank(self, rank: int) -> int:
        return rank // self.tp % self.sp


@dataclass(frozen=True)
class Meshes:
    """What `data_parallel_mesh` builds: the mesh FSDP2 shards over, the tensor-parallel mesh and
    the sequence-parallel group (None when that degree is 1), and the whole named mesh
    (dp_replicate, dp_shard, sp, tp) whose per-dim groups DeepSpeed's `mpu` hands out (None for a
    plain 1-D FSDP mesh)."""

    fsdp: Any
    tp: Any = None
    sp_group: Any = None
    mesh: Any = None


def data_parallel_mesh(device: torch.device, dims: ParallelDims | None = None) -> Meshes:
    """The device mesh of the FSDP path, cut into what the strategy applies.

    1-D over every rank for plain FSDP; (replicate, shard) for HSDP, which FSDP2 reads as
    "all-reduce across dim 0, reduce-scatter within dim 1". With sp > 1 FSDP2 shards over the
    dp_shard and sp dims flattened into one (torchtitan does the same with context parallel), so
    gradients are reduced over the sequence-parallel ranks too; with tp > 1 it shards over the
    data-parallel dims of the mesh and the tp dim is the tensor-parallel mesh.
    """
    from torch.distributed.device_mesh import init_device_mesh

    if dims is None or (dims.tp == 1 and dims.sp == 1 and dims.dp_replicate == 1):
        return Meshes(init_device_mesh(device.type, (get_world_size(),)))
    names = ("dp_replicate", "dp_shard", "sp", "tp")
    mesh = init_device_mesh(
        device.type, (dims.dp_replicate, dims.dp_shard, dims.sp, dims.tp), mesh_dim_names=names
    )
    shard = "dp_shard"
    if dims.sp > 1:
        shard = "dp_shard_sp"
        mesh["dp_shard", "sp"]._flatten(shard)
    fsdp_mesh = mesh["dp_replicate", shard] if dims.dp_replicate > 1 else mesh[shard]
    return Meshes(
        fsdp_mesh,
        tp=mesh["tp"] if dims.tp > 1 else None,
        sp_group=mesh["sp"].get_group() if dims.sp > 1 else None,
        mesh=mesh,
    )


_dp_groups: dict[ParallelDims, Any] = {}


def data_parallel_group(dims: ParallelDims) -> Any:
    """This rank's data- and sequence-parallel peers (the ranks of its tensor-parallel coordinate);
    None (the whole world) without tensor parallelism. Label counts and metrics are summed over it:
    the ranks of one tensor-parallel group see the same tokens, while sequence-parallel peers each
    hold their own slice of them."""
    if dims.tp == 1 or not is_distributed():
        return None
    if dims not in _dp_groups:
        rank, world = get_rank(), get_world_size()
        # new_group is collective over the world: every rank creates every group, in the same order.
        for t in range(dims.tp):
            group = tdist.new_group([r for r in range(world) if r % dims.tp == t])
            if rank % dims.tp == t:
                _dp_groups[dims] = group
    return _dp_groups[dims]


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def get_rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """The one guard for side effects that must happen once per job."""
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


# The tensors of the latest `broadcast_object`, kept referenced until the next one (or exit).
_last_broadcast: list[torch.Tensor] = []


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s value on every rank (the run directory, a resume decision), pickled.

    Not `broadcast_object_list`: its tensors are made and dropped inside torch, and a gloo worker
    thread releases its own reference to them just after the collective completes. Released last
    there, a tensor Python made needs the GIL to be freed; when that broadcast is the job's final
    collective (the requeue decision) and the main thread has already begun interpreter shutdown,
    CPython ends the worker with `pthread_exit`, which unwinds through a noexcept destructor:
    "terminate called without an active exception", SIGABRT, launcher rc 250, for about one
    ZeRO-3 run in five on 2 cores (DeepSpeed keeps the groups, hence their threads, alive to the
    end). Holding the tensors here means the worker never drops the last reference.
    """
    if not is_distributed():
        return obj
    device = torch.device("cpu")
    if tdist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    mine = get_rank() == src
    payload = pickle.dumps(obj) if mine else b""
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    tdist.broadcast(size, src=src)
    if mine:
        data = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)
    else:
        data = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    tdist.broadcast(data, src=src)
    _last_broadcast[:] = [size, data]
    return obj if mine else pickle.loads(data.cpu().numpy().tobytes())


def all_reduce_sum(t: torch.Tensor, group: Any = None) -> torch.Tensor:
    """In-place sum over the ranks of `group` (default: all; no-op alone); returns the tensor."""
    if is_distributed():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM, group=group)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return t


_host_group: Any = None


def all_reduce_max_host(value: int) -> int:
    """Max of a host integer over ranks, without touching the accelerator (so no device sync).

    A CPU tensor over gloo: the default group when it is gloo, else a gloo side group made on
    first use (every rank reaches this call at the same point of the loop, as `new_group` needs).
    """
    global _host_group
    if not is_distributed():
        return value
    if _host_group is None:
        _host_group = tdist.group.WORLD if tdist.get_backend() == "gloo" else tdist.new_group(backend="gloo")
    t = torch.tensor(value, dtype=torch.int64)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX, group=_host_group)
    return int(t)


def destroy() -> None:
    global _host_group
    _host_group = None
    _dp_groups.clear()
    if is_distributed():
        tdist.destroy_process_group()
