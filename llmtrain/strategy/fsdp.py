"""FSDP2 (`torch.distributed.fsdp.fully_shard`): parameters, gradients and optimizer states sharded
over all ranks, checkpoints written by every rank through torch.distributed.checkpoint (DCP).

How the model is sharded, in this order (`shard_model`):
1. Gradient checkpointing is already in place (HF's, non-reentrant, applied by `build_model`): it
   recomputes *inside* each decoder layer's `__call__`, so the FSDP hooks registered below run again
   during recomputation and all-gather the block's weights a second time, as they must.
2. `fully_shard` each decoder layer: one layer's full weights exist at a time, and the all-gather of
   layer i+1 overlaps the compute of layer i.
3. `fully_shard` the root (`CausalLMLoss`) last: it picks up what no layer owns (embeddings, final
   norm, lm_head), so a tied embedding/lm_head weight is one parameter in one group, and the loss is
   computed inside the root's hooks.

Mixed precision is FSDP's `MixedPrecisionPolicy`, not autocast: the sharded masters stay fp32, the
all-gather casts them to bf16/fp16 so every matmul runs in low precision, and gradients are reduced in
`strategy.fsdp.reduce_dtype` and land as fp32 shards for the optimizer. (Autocast on top would only add
casts; the loss module already computes cross-entropy in fp32.)
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard

from llmtrain.dist import data_parallel_mesh, ensure_process_group
from llmtrain.model.loss import CausalLMLoss
from llmtrain.model.precision import DTYPES, mixed_precision_dtype
from llmtrain.strategy.dcp_reader import SafeFileSystemReader, WeightsOnlyLoadPlanner
from llmtrain.strategy.sequence_parallel import SequenceParallel
from llmtrain.strategy.state_file import load_state_or_legacy, save_state
from llmtrain.strategy.tensor_parallel import apply_tensor_parallel
from llmtrain.strategy.torch_engine import TorchEngineStrategy

# DCP keys are "<section>.<name>"; the model section holds Hugging Face parameter names, so
# stripping "model." from a key gives the name `from_pretrained` expects.
MODEL_SECTION = "model"
OPTIM_SECTION = "optim"
# The wrapper's attribute holding the HF model: module FQNs are "model." + HF name.
WRAPPER_PREFIX = "model."
# Schedule and scaler state: schedule_state.safetensors + schedule_state.json (no pickle).
STATE_STEM = "schedule_state"
LEGACY_STATE_FILE = "schedule_state.pt"  # the pickle earlier versions wrote


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of an HF causal LM, found by the class names HF never splits.

    `_no_split_modules` names the decoder layer class of every HF architecture (LlamaDecoderLayer,
    Qwen2DecoderLayer, ...), so this works without knowing where the architecture keeps its layers.
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise RuntimeError(
            f"strategy=fsdp: found no decoder layers in {type(model).__name__} (its _no_split_modules is "
            f"{sorted(names) or 'empty'}); FSDP would shard the whole model as one unit"
        )
    return layers


def shard_model(
    module: CausalLMLoss,
    mesh,
    param_dtype: torch.dtype | None,
    reduce_dtype: torch.dtype,
    reshard_after_forward: bool,
    cpu_offload: bool,
) -> None:
    """Apply FSDP2 in place: each decoder layer, then the root (see the module docstring)."""
    kwargs = {
        "mesh": mesh,
        "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype),
    }
    if cpu_offload:
        # Pinned host memory only helps (and only exists) with an accelerator to copy to.
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    layers = decoder_layers(module.model)
    for i, layer in enumerate(layers):
        # Backward starts with the last layer right after forward ends: resharding it would only
        # make FSDP all-gather the same weights again at once.
        fully_shard(layer, reshard_after_forward=reshard_after_forward and i < len(layers) - 1, **kwargs)
    fully_shard(module, reshard_after_forward=reshard_after_forward, **kwargs)


def _hf_names(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix(WRAPPER_PREFIX): v for k, v in model_state.items()}


def _module_names(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {WRAPPER_PREFIX + k: v for k, v in hf_state.items()}


class FSDPStrategy(TorchEngineStrategy):
    name = "fsdp"
    reshards = True  # DCP reads whatever slices this rank's shards need
    sequence_parallel: SequenceParallel | None = None

    def setup(self, module: CausalLMLoss, lr_lambda: Callable[[int], float]) -> None:
        # FSDP2 and DCP need a process group even alone.
        ensure_process_group(self.dist.device, self.cfg.dist.timeout_s)
        fsdp = self.cfg.strategy.fsdp
        meshes = data_parallel_mesh(self.dist.device, self.dims)
        if meshes.tp is not None:  # before FSDP: FSDP2 shards the DTensors TP made, over its mesh
            apply_tensor_parallel(module.model, meshes.tp, decoder_layers(module.model))
        if meshes.sp_group is not None:
            self.sequence_parallel = SequenceParallel(meshes.sp_group)
            self.sequence_parallel.apply(module.model, tp=self.dims.tp)
        shard_model(
            module,
            meshes.fsdp,
            param_dtype=mixed_precision_dtype(self.cfg.trainer.precision),
            reduce_dtype=DTYPES[fsdp.reduce_dtype],
            reshard_after_forward=fsdp.reshard_after_forward,
            cpu_offload=fsdp.cpu_offload,
        )
        self.module = module
        # Built on the sharded DTensor parameters: each rank's optimizer states cover its shards only.
        self._build_engine(module, lr_lambda)

    @property
    def wrapped(self) -> torch.nn.Module:
        return self.fsdp_module

    def local_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.sequence_parallel is None:
            return batch
        return self.sequence_parallel.local_batch(batch)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        sp = self.sequence_parallel
        if sp is None or batch["labels"] is None:  # generation: every rank holds the whole prompt
            return super().forward(batch)
        if batch.get("document_ids") is not None:  # the document mask spans the whole sequence
            batch = {**batch, "document_ids": sp.full_document_ids(batch["document_ids"])}
        with sp.active():
            return super().forward(batch)

    @property
    def fsdp_module(self) -> FSDPModule:
        assert isinstance(self.module, FSDPModule), "call setup() first"
        return self.module

    def autocast(self) -> contextlib.AbstractContextManager:
        # No autocast: the MixedPrecisionPolicy already computes in param_dtype (module docstring).
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, is_last_micro: bool) -> None:
        # Until the last micro-batch, gradients accumulate unsharded on each rank and are
        # reduce-scattered once, instead of once per micro-batch.
        self.fsdp_module.set_requires_gradient_sync(is_last_micro)
        # Gradient checkpointing recomputes each layer's forward inside backward: its attention must
        # exchange heads for sequence as the forward did, or the recompute sees other shapes.
        sp = self.sequence_parallel
        with sp.active() if sp is not None else contextlib.nullcontext():
            # The reduce-scatter averages over its ranks (data- and sequence-parallel); the loop's
            # normalisation wants the sum. (Scaling the loss rather than the reduction keeps FSDP on
            # its default, backend-portable AVG op.)
            self.scaler.scale(loss * self.dims.fsdp).backward()

    def _dcp_state(self) -> dict[str, dict]:
        # Flattened optimizer state ("state.<fqn>.exp_avg") is keyed by parameter name only, so
        # DCP can reshard it onto any world size.
        model_state, optim_state = get_state_dict(
            self.module, self.optimizer, options=StateDictOptions(flatten_optimizer_state_dict=True)
        )
        return {MODEL_SECTION: _hf_names(model_state), OPTIM_SECTION: optim_state}

    def save(self, path: Path) -> None:
        # Every rank writes its own shards (__<rank>_0.distcp); rank 0 adds the metadata.
        dcp.save(self._dcp_state(), checkpoint_id=path)
        if self.dist.is_main:
            # Schedule and loss scale are the same on every rank: one small file.
            save_state(self.schedule_state(), path / STATE_STEM)

    def load(self, path: Path) -> None:
        # DCP reads whatever slices this rank's shards need, so the checkpoint may come from any
        # number of ranks.
        state = self._dcp_state()
        # Read as data only: DCP's own reader would unpickle .metadata unchecked (dcp_reader.py).
        dcp.load(state, storage_reader=SafeFileSystemReader(path), planner=WeightsOnlyLoadPlanner())
        set_state_dict(
            self.module,
            self.optimizer,
            model_state_dict=_module_names(state[MODEL_SECTION]),
            optim_state_dict=state[OPTIM_SECTION],
            options=StateDictOptions(flatten_optimizer_state_dict=True),
        )
        self.load_schedule_state(load_state_or_legacy(path / STATE_STEM, path / LEGACY_STATE_FILE))

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        # Collective: every rank takes part in the all-gather; only rank 0 keeps the result.
        state = get_model_state_dict(
            self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return _hf_names(state) if self.dist.is_main else None

    @classmethod
    def consolidate(cls, path: Path) -> dict[str, torch.Tensor]:
        """Full weights (HF names, the dtype they were trained in) from the DCP files of `path`.

        Allocates each model tensor at its full size from the checkpoint metadata and lets DCP
        fill it from every rank's file: no model, no process group.
        """
        reader = SafeFileSystemReader(path)
        prefix = MODEL_SECTION + "."
        weights = {
            key.removeprefix(prefix): torch.empty(meta.size, dtype=meta.properties.dtype)
            for key, meta in reader.read_metadata().state_dict_metadata.items()
            if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
        }
        if not weights:
            raise RuntimeError(
                f"{path}: no '{prefix}*' tensors in this DCP checkpoint; was it written by strategy=fsdp?"
            )
        with warnings.catch_warnings():
            # no_dist=True is the intent here; DCP still warns that it "assumes" a single process.
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(
                {MODEL_SECTION: weights},
                storage_reader=reader,
                planner=WeightsOnlyLoadPlanner(),
                no_dist=True,
            )
        return weights
