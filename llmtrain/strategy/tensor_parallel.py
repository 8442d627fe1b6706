"""Tensor parallelism on a plain Hugging Face model, applied before FSDP2 (torchtitan's order).

The plan is the architecture's own: transformers ships `base_model_tp_plan` in every Llama/Qwen2/
Mistral config (`layers.*.self_attn.q_proj: colwise`, ..., `layers.*.mlp.down_proj: rowwise`), so a
new architecture needs no table here. Column-wise q/k/v/gate/up leave each rank with whole heads
(and whole MLP columns); the attention reshapes by `-1` heads, so it runs on the local heads as
is; row-wise o/down all-reduce back to the full hidden state. Embeddings, norms and the lm_head
stay replicated: the chunked loss then needs no vocabulary-parallel cross-entropy, at the cost of
one full lm_head copy per tensor-parallel rank (sharded by FSDP over the data-parallel ranks).
"""

from __future__ import annotations

from torch import nn
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from llmtrain.config import ConfigError

_STYLES = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
_LAYER_PREFIX = "layers.*."


def layer_plan(model: nn.Module) -> dict[str, str]:
    """{module path inside a decoder layer: "colwise" | "rowwise"} from the model's config."""
    plan = getattr(model.config, "base_model_tp_plan", None) or {}
    layer = {k.removeprefix(_LAYER_PREFIX): v for k, v in plan.items() if k.startswith(_LAYER_PREFIX)}
    unsupported = {k: v for k, v in layer.items() if v not in _STYLES}
    if not layer or unsupported:
        raise ConfigError(
            f"parallel.tp: {type(model).__name__}'s base_model_tp_plan "
            + (f"uses styles we do not apply ({unsupported})" if layer else "is empty")
            + "; tensor parallelism here supports column-/row-wise linear layers (Llama, Qwen2, Mistral)"
        )
    return layer


def apply_tensor_parallel(model: nn.Module, tp_mesh, decoder_layers: list[nn.Module]) -> None:
    """Shard every decoder layer's projections over `tp_mesh`, in place."""
    config = model.config
    tp = tp_mesh.size()
    for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        value = getattr(config, key)
        if value % tp:
            raise ConfigError(f"parallel.tp={tp} does not divide the model's {key}={value}")
    plan = {name: _STYLES[style]() for name, style in layer_plan(model).items()}
    for layer in decoder_layers:
        parallelize_module(layer, tp_mesh, plan)
