"""LoRA factors as the engine computes them: per fused module group (qkv, o, gate_up, down), one `A` [in, r]
and one `B` [r, out] with the scale (alpha/r, or alpha/sqrt(r) for rsLoRA) folded in; members of a group are
stacked block-diagonally, so an untargeted member gets an exact zero. DoRA adds a per-output factor
magnitude / ||W + sBA|| computed once at load. Weighted compositions of LoRA adapters are LoRA adapters of
the summed rank (serving.adapter_weights.compose), so they are exact and cost nothing extra per token.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch

from adapters.files import lora_scale
from contracts.errors import InvalidRequest
from serving.adapter_weights import AdapterWeights, GroupFactors, mismatch, unsupported

if TYPE_CHECKING:
    from serving.model import LlamaForward


_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.(lora_A\.weight|lora_B\.weight|"
                  r"lora_magnitude_vector(?:\.weight)?)$")
#: LoRA on the output layer (what peft names lm_head; the tinker SDK's "unembed")
_UNEMBED = re.compile(r"(?:^|\.)lm_head\.(lora_A|lora_B)\.weight$")


def read_lora(config: dict[str, Any], tensors: dict[str, torch.Tensor], forward: LlamaForward, *, key: str,
              max_rank: int) -> AdapterWeights:
    """A LoRA adapter's factors, checked against the served base model (config: its adapter_config.json)."""
    # Long on purpose: the factors of every layer and fused group checked and stacked in one walk.
    g = forward.geometry
    modules: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    head: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if (unembed := _UNEMBED.search(name)) is not None:
            head[unembed.group(1)] = tensor
            continue
        match = _KEY.search(name)
        if match is None and name.endswith("lm_head.base_layer.weight"):
            raise unsupported("the adapter stores the output layer's own weights (lm_head.base_layer: peft saves them "
                              "for a tied output layer unless saved with save_embedding_layers=False); ftaas serves "
                              "the output layer's LoRA factors on the base model's weights")
        if match is None:
            raise unsupported(f"adapter tensor {name!r} does not belong to a servable decoder module")
        layer, module, part = int(match.group(1)), match.group(2), match.group(3).split(".")[0]
        if module not in forward.module_group or layer >= g.layers:
            raise mismatch(f"adapter tensor {name!r} targets a module the base model does not have")
        modules.setdefault((layer, module), {})[part] = tensor

    layers: list[dict[str, GroupFactors]] = [{} for _ in range(g.layers)]
    uses_dora = False
    dtype = forward.dtype
    for layer in range(g.layers):
        for group, members in forward.members.items():
            fan_in, outs = g.groups[group]
            parts = [(m, modules.get((layer, m))) for m in members]
            if all(p is None for _, p in parts):
                continue
            a_blocks, magnitudes = [], []
            any_magnitude = False
            offset = 0
            ranks = [int(p["lora_A"].shape[0]) if p else 0 for _, p in parts]
            total_rank = sum(ranks)
            if total_rank > max_rank * len(members):
                raise InvalidRequest(f"adapter rank {max(ranks)} exceeds the served maximum {max_rank} "
                                     "(FTAAS_SERVING_MAX_LORA_RANK)", code="adapter_rank_too_high", param="model")
            b_full = torch.zeros(total_rank, sum(outs), dtype=torch.float32)
            out_offset = 0
            for (module, part), rank, out in zip(parts, ranks, outs, strict=True):
                if part is None:
                    magnitudes.append(torch.ones(out))
                    out_offset += out
                    continue
                if "lora_A" not in part or "lora_B" not in part:
                    raise unsupported(f"layer {layer} {module}: lora_A and lora_B are both required")
                a, b = part["lora_A"].float(), part["lora_B"].float()
                if a.shape != (rank, fan_in) or b.shape != (out, rank):
                    raise InvalidRequest(f"layer {layer} {module}: factor shapes {tuple(a.shape)}/{tuple(b.shape)} "
                                         f"do not fit the base model ({out}x{fan_in})",
                                         code="adapter_base_mismatch", param="model")
                block = "self_attn" if forward.module_group[module] in ("qkv", "o") else "mlp"
                scale = lora_scale(config, f"model.layers.{layer}.{block}.{module}", rank)
                a_blocks.append(a.T)
                b_full[offset:offset + rank, out_offset:out_offset + out] = b.T * scale
                if "lora_magnitude_vector" in part:
                    any_magnitude = True
                    weight = forward.weight(layer, group)[out_offset:out_offset + out].float()
                    norm = torch.linalg.norm(weight + scale * (b @ a), dim=1)
                    magnitudes.append(part["lora_magnitude_vector"].float().reshape(-1) / norm)
                else:
                    magnitudes.append(torch.ones(out))
                offset += rank
                out_offset += out
            uses_dora |= any_magnitude
            layers[layer][group] = GroupFactors(
                a=torch.cat(a_blocks, 1).to(dtype).contiguous(), b=b_full.to(dtype).contiguous(),
                magnitude=torch.cat(magnitudes).to(dtype) if any_magnitude else None,
            )
    unembed = _unembed(config, head, forward, max_rank=max_rank) if head else None
    if not any(layers) and unembed is None:
        raise unsupported("the adapter has no LoRA factors")
    return AdapterWeights(key=key, layers=layers, uses_dora=uses_dora,
                          group_sizes={group: len(members) for group, members in forward.members.items()},
                          unembed=unembed)


def _unembed(config: dict[str, Any], head: dict[str, torch.Tensor], forward: LlamaForward, *,
             max_rank: int) -> GroupFactors:
    """The output layer's LoRA factors, checked against the base model's output layer (vocabulary x hidden)."""
    if set(head) != {"lora_A", "lora_B"}:
        raise unsupported("lm_head: lora_A and lora_B are both required")
    if config.get("use_dora"):
        raise unsupported("DoRA on the output layer (lm_head) cannot be batch-served")
    a, b = head["lora_A"].float(), head["lora_B"].float()
    rank, hidden, vocabulary = int(a.shape[0]), forward.geometry.hidden, forward.geometry.vocab
    if a.shape != (rank, hidden) or b.shape != (vocabulary, rank):
        raise InvalidRequest(f"lm_head: factor shapes {tuple(a.shape)}/{tuple(b.shape)} do not fit the base model "
                             f"({vocabulary}x{hidden})", code="adapter_base_mismatch", param="model")
    if rank > max_rank:
        raise InvalidRequest(f"adapter rank {rank} exceeds the served maximum {max_rank} "
                             "(FTAAS_SERVING_MAX_LORA_RANK)", code="adapter_rank_too_high", param="model")
    scale = lora_scale(config, "lm_head", rank)
    # Kept in float32: the products are one row per sequence and step, and the logits are float32.
    device = forward.device
    return GroupFactors(a=a.T.contiguous().to(device), b=(b.T * scale).contiguous().to(device), magnitude=None)


def rank_classes(max_rank: int) -> list[int]:
    """Slot ranks offered: powers of two from 8 up to `max_rank` (which is always one)."""
    classes = [8]
    while classes[-1] * 2 < max_rank:
        classes.append(classes[-1] * 2)
    return sorted({c for c in classes if c < max_rank} | {max_rank})
