"""Prompt-learning adapters as the engine computes them: a prefix of virtual tokens in the KV cache.

peft's prompt-learning methods put `n` virtual tokens before a sequence's own:

* prefix tuning hands the model learned keys and values for them at every layer (a `past_key_values` of
  `n` positions), and the sequence's tokens follow at positions n, n+1, ...;
* prompt tuning and p-tuning put learned embeddings in front of the token embeddings, at positions
  0..n-1. Attention is causal, so the keys and values of those positions depend on the embeddings and the
  base model only, never on what follows: they are computed once when the adapter loads (the engine's own
  forward pass over the embeddings) and from then on act exactly as a prefix-tuning prefix does.

Either way an adapter becomes `AdapterWeights.prefix`, [layers, 2, kv_heads, n, head_dim]: a sequence's KV
cache starts with it (serving.engine) and its own tokens are computed after it, batched with every other row.
The saved `prompt_embeddings` are what peft's `get_prompt_embedding_to_save` wrote: for prefix tuning with
a projection, already the projection's output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from serving.adapter_weights import AdapterWeights, mismatch, unsupported

if TYPE_CHECKING:
    from serving.model import LlamaForward

EMBEDDINGS = "prompt_embeddings"


def read_prefix(config: dict[str, Any], tensors: dict[str, torch.Tensor], forward: LlamaForward, *,
                key: str) -> AdapterWeights:
    """A prefix-tuning adapter: its keys and values per layer, as peft lays them out ([n, layers x 2 x kv_heads x
    head_dim], keys and values of layer l at 2l and 2l + 1)."""
    g = forward.geometry
    embeddings = _embeddings(config, tensors)
    if int(config.get("num_transformer_submodules") or 1) != 1:
        raise unsupported("prefix tuning for encoder-decoder models is not served")
    width = g.layers * 2 * g.kv_heads * g.head_dim
    if int(config.get("num_layers") or 0) != g.layers or embeddings.shape[1] != width:
        raise mismatch(f"the prefix holds {embeddings.shape[1]} values per virtual token for "
                       f"{config.get('num_layers')} layers; the base model needs {width} for {g.layers} layers "
                       f"({g.kv_heads} key/value heads of {g.head_dim})")
    n = embeddings.shape[0]
    prefix = embeddings.view(n, g.layers, 2, g.kv_heads, g.head_dim).permute(1, 2, 3, 0, 4)
    return _with_prefix(forward, key, prefix.to(forward.dtype).contiguous())


def read_prompt(config: dict[str, Any], tensors: dict[str, torch.Tensor], forward: LlamaForward, *,
                key: str) -> AdapterWeights:
    """A prompt-tuning or p-tuning adapter: its virtual embeddings, run through the base model once."""
    embeddings = _embeddings(config, tensors)
    if embeddings.shape[1] != forward.geometry.hidden:
        raise mismatch(f"the virtual tokens' embeddings have {embeddings.shape[1]} dimensions; the base model's "
                       f"have {forward.geometry.hidden}")
    return _with_prefix(forward, key, forward.virtual_prefix(embeddings))


def _embeddings(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    if set(tensors) != {EMBEDDINGS}:
        raise unsupported(f"a prompt-learning adapter holds {EMBEDDINGS!r} only; this one holds "
                          f"{', '.join(sorted(tensors))}")
    embeddings = tensors[EMBEDDINGS].float()
    n = int(config.get("num_virtual_tokens") or 0)
    if embeddings.ndim != 2 or embeddings.shape[0] != n or n < 1:
        raise mismatch(f"{EMBEDDINGS} of shape {tuple(embeddings.shape)} does not hold the {n} virtual tokens the "
                       "adapter's configuration names")
    return embeddings


def _with_prefix(forward: LlamaForward, key: str, prefix: torch.Tensor) -> AdapterWeights:
    n = prefix.shape[3]
    if n >= forward.max_context:
        raise unsupported(f"the adapter's {n} virtual tokens fill this model's served context ({forward.max_context})")
    return AdapterWeights(key=key, layers=[{} for _ in range(forward.geometry.layers)], uses_dora=False,
                          group_sizes={group: len(members) for group, members in forward.members.items()},
                          prefix=prefix)
