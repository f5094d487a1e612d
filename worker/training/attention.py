"""Attention for packed rows that computes only what each example needs, on every device.

Which kernel a packed batch uses (`for_packed_rows`):

* CUDA with FlashAttention installed, in bf16/fp16: transformers' `flash_attention_2`, whose variable-length kernel takes
  the examples' boundaries as `cu_seqlens` derived from the packed rows' position ids;
* CUDA without it: transformers' `flex_attention` (PyTorch's FlexAttention), whose block mask transformers
  builds from the same position restarts (a document mask: no token attends across examples, and fully
  masked blocks are skipped);
* CPU: `packed_sdpa` below. FlexAttention has no backward pass on CPU, and FlashAttention is CUDA-only.

Never a loop over examples on a GPU: there it would launch a kernel per example.

On the CPU, with packed rows, transformers' default path gives scaled-dot-product attention a block-diagonal causal
mask over the whole row, and the kernel computes every block of the row: for 2048-token rows holding
~250-token examples that is most of the step (measured: attention was 68 % of a training step's time,
docs/benchmarks.md). This implementation splits each row at its position restarts and runs causal
attention per example, so the kernel's causal block skipping leaves only the useful work.

It is registered with transformers' attention and mask interfaces under `packed_sdpa`. Packed batches
carry no padding mask, and for them the mask builder builds nothing: a step's examples share one row
(worker.training.batching), and transformers' block-diagonal mask over it would grow with the square of
the step's tokens (64 MB at 8k tokens, 4 GB at 64k) for a kernel that never reads it. Padded batches
(rehearsal, evaluation of padded rows) get transformers' own SDPA mask. A model that does not pass
`position_ids` down to its attention cannot tell packed examples apart: that is an error, never attention
across examples. A sliding-window model (Mistral, Gemma 3's local layers) gets its window: an example
longer than the window runs with a banded causal mask.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NAME = "packed_sdpa"


def _segments(positions: torch.Tensor) -> list[int]:
    """Start offsets of the examples in one row (where positions restart), plus the row's end."""
    restarts = torch.nonzero(positions[1:] != positions[:-1] + 1).flatten() + 1
    return [0, *restarts.tolist(), positions.shape[0]]


def packed_sdpa(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                position_ids: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """query: [batch, heads, length, dim]; key/value may have fewer heads (grouped-query attention)."""
    if kwargs.get("softcap") is not None:  # never drop it silently: the model would train another function
        raise ValueError("packed_sdpa does not implement attention logit softcapping")
    if position_ids is None:
        if attention_mask is None:
            raise ValueError("packed_sdpa: this model does not pass position_ids to its attention, so packed "
                             "examples cannot be told apart; train it with packing off")
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    window = kwargs.get("sliding_window")
    batch, length = query.shape[0], query.shape[2]
    positions = position_ids.expand(batch, length) if position_ids.shape[0] != batch else position_ids
    grouped = query.shape[1] != key.shape[1]
    dropout_p = dropout if module.training else 0.0
    rows = []
    # split/unbind rather than slicing: their backward is one concatenation, where every slice's backward
    # would allocate and add a zero-filled gradient of the whole tensor.
    for row, (q, k, v) in enumerate(zip(query.unbind(0), key.unbind(0), value.unbind(0), strict=True)):
        bounds = _segments(positions[row])
        sizes = [end - start for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
        pieces = []
        for qs, ks, vs in zip(q.split(sizes, dim=1), k.split(sizes, dim=1), v.split(sizes, dim=1), strict=True):
            band = _banded(qs.shape[1], window, qs.device) if window else None
            pieces.append(F.scaled_dot_product_attention(qs.unsqueeze(0), ks.unsqueeze(0), vs.unsqueeze(0),
                                                         attn_mask=band, is_causal=band is None, scale=scaling,
                                                         dropout_p=dropout_p, enable_gqa=grouped))
        rows.append(torch.cat(pieces, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def _banded(length: int, window: int, device: torch.device) -> torch.Tensor | None:
    """Causal attention limited to the last `window` positions (transformers' sliding window: a query at i
    sees keys j with i - window < j <= i), or None where the example fits in the window (plain causal)."""
    if length <= window:
        return None
    offsets = torch.arange(length, device=device)
    distance = offsets.unsqueeze(1) - offsets.unsqueeze(0)
    return (distance >= 0) & (distance < window)


def packed_mask(batch_size: int, q_length: int, kv_length: int, *args: Any,
                attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """The mask builder registered with `packed_sdpa`: nothing for packed batches (no padding mask; the
    kernel splits rows at the position restarts), transformers' SDPA mask for padded ones."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(batch_size, q_length, kv_length, *args, attention_mask=attention_mask, **kwargs)


def computes(config: Any) -> bool:
    """Whether this attention computes what the model's own does: not for attention logit softcapping
    (Gemma 2), which scaled-dot-product attention has no place for."""
    return getattr(config, "attn_logit_softcapping", None) is None


def for_packed_rows(config: Any, device: torch.device, *, half_precision: bool = True) -> str | None:
    """The attention implementation packed batches use on `device` (see the module docstring), or None: the
    model keeps its own, over transformers' block-diagonal mask (a softcapped model on the CPU).
    `half_precision`: the step runs in bf16/fp16 (FlashAttention computes in nothing else)."""
    if device.type == "cuda":
        from transformers.utils import is_flash_attn_2_available

        return "flash_attention_2" if half_precision and is_flash_attn_2_available() else "flex_attention"
    return register() if computes(config) else None


def register() -> str:
    """Make `packed_sdpa` available to transformers models (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, packed_sdpa)
    AttentionMaskInterface.register(NAME, packed_mask)
    return NAME
