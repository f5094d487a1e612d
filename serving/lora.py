"""Adapters as the engine uses them: LoRA factors per fused module group, and the per-slot buffers that let
every row of a batch use a different adapter in one forward pass without merging weights.

An adapter directory (peft format: `adapter_config.json` + `adapter_model.safetensors`) becomes an
`AdapterWeights`: for each layer and module group (qkv, o, gate_up, down) one `A` [in, r] and one `B`
[r, out] with the scale (alpha/r, or alpha/sqrt(r) for rsLoRA) folded in; members of a group are stacked
block-diagonally, so an untargeted member gets an exact zero. DoRA adds a per-output factor
magnitude / ||W + sBA|| computed once at load. Weighted compositions of LoRA adapters are LoRA adapters of
the summed rank (concatenated factors), so they are exact and cost nothing extra per token.

Served types: LoRA, rsLoRA, DoRA and everything saved as plain LoRA (PiSSA/OLoRA/CorDA/EVA/LoftQ are
converted at training time). IA3 and prompt-learning adapters are refused with a clear error.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from ftaas.errors import InvalidRequest

if TYPE_CHECKING:
    from serving.model import LlamaForward, StepBatch

from serving.model import GROUPS, MODULE_GROUP

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.(lora_A\.weight|lora_B\.weight|"
                  r"lora_magnitude_vector(?:\.weight)?)$")


@dataclass
class GroupFactors:
    a: torch.Tensor  # [in, rank]
    b: torch.Tensor  # [rank, out], scale folded in
    magnitude: torch.Tensor | None  # [out] DoRA factor, or None

    @property
    def rank(self) -> int:
        return int(self.a.shape[1])


@dataclass
class AdapterWeights:
    key: str
    #: layer -> group -> factors (groups the adapter does not touch are absent)
    layers: list[dict[str, GroupFactors]]
    uses_dora: bool

    @property
    def nbytes(self) -> int:
        total = 0
        for groups in self.layers:
            for f in groups.values():
                total += f.a.numel() * f.a.element_size() + f.b.numel() * f.b.element_size()
                if f.magnitude is not None:
                    total += f.magnitude.numel() * f.magnitude.element_size()
        return total


def unsupported(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="unsupported_adapter", param="model")


def read_adapter(directory: Path, forward: LlamaForward, *, key: str, max_rank: int) -> AdapterWeights:
    """Validate a peft adapter directory against the served base model and convert it."""
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise unsupported(f"{peft_type or 'unknown'} adapters cannot be batch-served; LoRA-family adapters can "
                          "(LoRA, rsLoRA, DoRA, and PiSSA/OLoRA/CorDA, which are saved as LoRA)")
    if config.get("modules_to_save") or config.get("trainable_token_indices"):
        raise unsupported("adapters that replace whole modules or token embeddings cannot be batch-served")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise unsupported("adapters with trained biases cannot be batch-served")
    if config.get("fan_in_fan_out"):
        raise unsupported("fan_in_fan_out adapters (Conv1D models) are not supported")
    tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    g = forward.geometry
    modules: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        match = _KEY.search(name)
        if match is None:
            raise unsupported(f"adapter tensor {name!r} does not belong to a servable decoder module")
        layer, module, part = int(match.group(1)), match.group(2), match.group(3).split(".")[0]
        if module not in MODULE_GROUP or layer >= g.layers:
            raise InvalidRequest(f"adapter tensor {name!r} targets a module the base model does not have",
                                 code="adapter_base_mismatch", param="model")
        modules.setdefault((layer, module), {})[part] = tensor
    use_rslora = bool(config.get("use_rslora"))
    alpha_default = float(config.get("lora_alpha", config.get("r", 8)))
    alpha_pattern: dict[str, float] = config.get("alpha_pattern") or {}

    layers: list[dict[str, GroupFactors]] = [{} for _ in range(g.layers)]
    uses_dora = False
    dtype = forward.dtype
    for layer in range(g.layers):
        for group, members in GROUPS.items():
            fan_in, outs = g.groups[group]
            parts = [(m, modules.get((layer, m))) for m in members]
            if all(p is None for _, p in parts):
                continue
            a_blocks, b_blocks, magnitudes = [], [], []
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
                alpha = float(_pattern_value(alpha_pattern, f"layers.{layer}.{module}", alpha_default))
                scale = alpha / math.sqrt(rank) if use_rslora else alpha / rank
                a_blocks.append(a.T)
                b_full[offset:offset + rank, out_offset:out_offset + out] = b.T * scale
                if "lora_magnitude_vector" in part:
                    any_magnitude = True
                    weight = forward.layers[layer].linear[group][0][out_offset:out_offset + out].float()
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
    if not any(layers):
        raise unsupported("the adapter has no LoRA factors")
    return AdapterWeights(key=key, layers=layers, uses_dora=uses_dora)


def compose(parts: list[tuple[AdapterWeights, float]], *, key: str, max_rank: int) -> AdapterWeights:
    """The exact weighted sum of LoRA adapters: sum_i w_i B_i A_i x, as one adapter of the summed rank."""
    if any(adapter.uses_dora for adapter, _ in parts):
        raise InvalidRequest("DoRA adapters cannot be composed (their magnitude rescaling is not additive)",
                             code="unsupported_adapter", param="adapters")
    layers: list[dict[str, GroupFactors]] = []
    for index in range(len(parts[0][0].layers)):
        groups: dict[str, GroupFactors] = {}
        for group, members in GROUPS.items():
            present = [(adapter.layers[index][group], weight) for adapter, weight in parts
                       if group in adapter.layers[index]]
            if not present:
                continue
            rank = sum(f.rank for f, _ in present)
            if rank > max_rank * len(members):
                raise InvalidRequest(f"the composed rank {rank} of group {group} exceeds the served maximum "
                                     f"{max_rank * len(members)} (FTAAS_SERVING_MAX_LORA_RANK)",
                                     code="adapter_rank_too_high", param="adapters")
            groups[group] = GroupFactors(a=torch.cat([f.a for f, _ in present], 1).contiguous(),
                                         b=torch.cat([f.b * w for f, w in present], 0).contiguous(), magnitude=None)
        layers.append(groups)
    return AdapterWeights(key=key, layers=layers, uses_dora=False)


def _pattern_value(patterns: dict[str, float], name: str, default: float) -> float:
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return value
    return default


class SlotLora:
    """Per-KV-slot copies of each running sequence's adapter factors, padded to a fixed rank.

    A decode step multiplies every slot's row by that slot's own factors in one batched product (`bmm`:
    one small problem per slot, the same shapes every step), so rows with different adapters, or none,
    share the pass. Filling a slot costs one copy when a sequence joins; steps copy nothing.
    """

    def __init__(self, forward: LlamaForward, *, max_rank: int) -> None:
        self.forward = forward
        slots = forward.max_slots + 1
        dtype, device = forward.dtype, forward.device
        self.a: list[dict[str, torch.Tensor]] = []
        self.b: list[dict[str, torch.Tensor]] = []
        self.magnitude: list[dict[str, torch.Tensor]] = []
        for _ in range(forward.geometry.layers):
            a, b, m = {}, {}, {}
            for group, (fan_in, fan_out) in forward.group_dims().items():
                rank = max_rank * len(GROUPS[group])
                a[group] = torch.zeros(slots, fan_in, rank, dtype=dtype, device=device)
                b[group] = torch.zeros(slots, rank, fan_out, dtype=dtype, device=device)
                m[group] = torch.ones(slots, fan_out, dtype=dtype, device=device)
            self.a.append(a)
            self.b.append(b)
            self.magnitude.append(m)
        self.has_adapter = [False] * slots
        self.has_dora = [False] * slots

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in (*self.a, *self.b, *self.magnitude)
                   for t in layer.values())

    def assign(self, slot: int, adapter: AdapterWeights | None) -> None:
        for index in range(len(self.a)):
            for group in GROUPS:
                a, b, m = self.a[index][group][slot], self.b[index][group][slot], self.magnitude[index][group][slot]
                factors = adapter.layers[index].get(group) if adapter is not None else None
                a.zero_()
                b.zero_()
                m.fill_(1.0)
                if factors is not None:
                    a[:, :factors.rank] = factors.a
                    b[:factors.rank] = factors.b
                    if factors.magnitude is not None:
                        m.copy_(factors.magnitude)
        self.has_adapter[slot] = adapter is not None
        self.has_dora[slot] = adapter is not None and adapter.uses_dora

    def apply(self, out: torch.Tensor, x: torch.Tensor, layer: int, group: str, batch: StepBatch) -> torch.Tensor:
        """out: the base product for every row; returns it with each row's own adapter applied."""
        a, b, m = self.a[layer][group], self.b[layer][group], self.magnitude[layer][group]
        if batch.decode_lora:
            count = batch.decode_count
            slots = batch.decode_slots
            # One row per slot (zeros where a slot has no decode row this step): same shapes every step.
            per_slot = x.new_zeros(a.shape[0], 1, x.shape[1])
            per_slot[slots] = x[:count].unsqueeze(1)
            delta = torch.bmm(torch.bmm(per_slot, a), b)[slots, 0]
            rows = out[:count] + delta
            if batch.decode_dora:
                rows = rows * m[slots]
            out = torch.cat([rows, out[count:]]) if count < out.shape[0] else rows
        for start, length, slot in batch.lora_prefills:
            segment = x[start:start + length]
            rows = out[start:start + length] + (segment @ a[slot]) @ b[slot]
            if self.has_dora[slot]:
                rows = rows * m[slot]
            out = torch.cat([out[:start], rows, out[start + length:]])
        return out
