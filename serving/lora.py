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

from adapters.files import CONFIG, load_tensors, pattern_value
from contracts.errors import InvalidRequest

if TYPE_CHECKING:
    from serving.model import LlamaForward, StepBatch


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
    #: group -> how many modules it stacks (the base model's; a group's rank may be up to that many times
    #: the per-module maximum)
    group_sizes: dict[str, int]

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
    config = json.loads((directory / CONFIG).read_text())
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
    # Dense weights, or ComPEFT-compressed ones decompressed here (adapters.compress).
    tensors = load_tensors(directory)
    g = forward.geometry
    modules: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        match = _KEY.search(name)
        if match is None:
            raise unsupported(f"adapter tensor {name!r} does not belong to a servable decoder module")
        layer, module, part = int(match.group(1)), match.group(2), match.group(3).split(".")[0]
        if module not in forward.module_group or layer >= g.layers:
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
                alpha = float(pattern_value(alpha_pattern, f"model.layers.{layer}.{block}.{module}", alpha_default))
                scale = alpha / math.sqrt(rank) if use_rslora else alpha / rank
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
    if not any(layers):
        raise unsupported("the adapter has no LoRA factors")
    return AdapterWeights(key=key, layers=layers, uses_dora=uses_dora,
                          group_sizes={group: len(members) for group, members in forward.members.items()})


def compose(parts: list[tuple[AdapterWeights, float]], *, key: str, max_rank: int) -> AdapterWeights:
    """The exact weighted sum of LoRA adapters: sum_i w_i B_i A_i x, as one adapter of the summed rank."""
    if any(adapter.uses_dora for adapter, _ in parts):
        raise InvalidRequest("DoRA adapters cannot be composed (their magnitude rescaling is not additive)",
                             code="unsupported_adapter", param="adapters")
    layers: list[dict[str, GroupFactors]] = []
    sizes = parts[0][0].group_sizes
    for index in range(len(parts[0][0].layers)):
        groups: dict[str, GroupFactors] = {}
        for group, size in sizes.items():
            present = [(adapter.layers[index][group], weight) for adapter, weight in parts
                       if group in adapter.layers[index]]
            if not present:
                continue
            rank = sum(f.rank for f, _ in present)
            if rank > max_rank * size:
                raise InvalidRequest(f"the composed rank {rank} of group {group} exceeds the served maximum "
                                     f"{max_rank * size} (FTAAS_SERVING_MAX_LORA_RANK)",
                                     code="adapter_rank_too_high", param="adapters")
            groups[group] = GroupFactors(a=torch.cat([f.a for f, _ in present], 1).contiguous(),
                                         b=torch.cat([f.b * w for f, w in present], 0).contiguous(), magnitude=None)
        layers.append(groups)
    return AdapterWeights(key=key, layers=layers, uses_dora=False, group_sizes=sizes)


def rank_classes(max_rank: int) -> list[int]:
    """Slot ranks offered: powers of two from 8 up to `max_rank` (which is always one)."""
    classes = [8]
    while classes[-1] * 2 < max_rank:
        classes.append(classes[-1] * 2)
    return sorted({c for c in classes if c < max_rank} | {max_rank})


class SlotLora:
    """Per-KV-slot copies of each running sequence's adapter factors, padded to a fixed rank class.

    A decode step multiplies every slot's row by that slot's own factors in one batched product per rank
    class (`bmm`: one small problem per slot, the same shapes every step), so rows with different adapters,
    or none, share the pass. An adapter's class (8, 16, 32, ... up to the served maximum) depends only on
    the adapter, never on the batch: a row's numbers are the same alone or batched, and an r=8 adapter
    does not pay for the largest rank served. Filling a slot costs one copy when a sequence joins.
    """

    def __init__(self, forward: LlamaForward, *, max_rank: int) -> None:
        self.forward = forward
        self.classes = rank_classes(max_rank)
        slots = forward.max_slots + 1
        dtype, device = forward.dtype, forward.device
        dims = forward.group_dims()
        #: class -> layer -> group -> [slots, in, class x members] / [slots, class x members, out]. A class's
        #: buffers are made when the first adapter of that class arrives: every class for every slot of a
        #: 135M model is 6.6 GB (measured: two such engines, the API's and an eval worker's, ran a 24 GiB
        #: machine out of memory), and a server with no adapter, or only r=8 ones, needs none or one.
        self.a: dict[int, list[dict[str, torch.Tensor]]] = {}
        self.b: dict[int, list[dict[str, torch.Tensor]]] = {}
        self.magnitude = [{group: torch.ones(slots, fan_out, dtype=dtype, device=device)
                           for group, (_, fan_out) in dims.items()} for _ in range(forward.geometry.layers)]
        self.slot_class: list[int | None] = [None] * slots
        self.has_dora = [False] * slots

    def _allocate(self, rank: int) -> None:
        if rank in self.a:
            return
        forward, slots = self.forward, self.forward.max_slots + 1
        dtype, device = forward.dtype, forward.device
        dims = forward.group_dims()
        self.a[rank] = [{group: torch.zeros(slots, fan_in, rank * len(forward.members[group]), dtype=dtype, device=device)
                         for group, (fan_in, _) in dims.items()} for _ in range(forward.geometry.layers)]
        self.b[rank] = [{group: torch.zeros(slots, rank * len(forward.members[group]), fan_out, dtype=dtype, device=device)
                         for group, (_, fan_out) in dims.items()} for _ in range(forward.geometry.layers)]

    def class_of(self, adapter: AdapterWeights) -> int:
        needed = max(-(-f.rank // adapter.group_sizes[group]) for layer in adapter.layers for group, f in layer.items())
        return next(c for c in self.classes if c >= needed)

    def assign(self, slot: int, adapter: AdapterWeights | None) -> None:
        previous = self.slot_class[slot]
        if previous is not None:
            for index in range(len(self.magnitude)):
                for group in self.forward.members:
                    self.a[previous][index][group][slot].zero_()
                    self.b[previous][index][group][slot].zero_()
                    self.magnitude[index][group][slot].fill_(1.0)
        self.slot_class[slot] = None
        self.has_dora[slot] = False
        if adapter is None:
            return
        rank = self.class_of(adapter)
        self._allocate(rank)
        for index, groups in enumerate(adapter.layers):
            for group, factors in groups.items():
                self.a[rank][index][group][slot, :, :factors.rank] = factors.a
                self.b[rank][index][group][slot, :factors.rank] = factors.b
                if factors.magnitude is not None:
                    self.magnitude[index][group][slot].copy_(factors.magnitude)
        self.slot_class[slot] = rank
        self.has_dora[slot] = adapter.uses_dora

    def move(self, source: int, target: int) -> None:
        """Give `target` the adapter of `source` (exact copies) and clear `source`."""
        self.assign(target, None)
        rank = self.slot_class[source]
        if rank is not None:
            for index in range(len(self.magnitude)):
                for group in self.forward.members:
                    self.a[rank][index][group][target].copy_(self.a[rank][index][group][source])
                    self.b[rank][index][group][target].copy_(self.b[rank][index][group][source])
                    self.magnitude[index][group][target].copy_(self.magnitude[index][group][source])
            self.slot_class[target] = rank
            self.has_dora[target] = self.has_dora[source]
        self.assign(source, None)

    def apply(self, out: torch.Tensor, x: torch.Tensor, layer: int, group: str, batch: StepBatch) -> torch.Tensor:
        """out: the base product for every row; returns it with each row's own adapter applied."""
        if batch.decode_lora and batch.decode_contiguous:
            # Decode row i is slot i: plain views, no gathers.
            count = batch.decode_count
            # At least two slots: torch dispatches a bmm over a batch of one to a plain matrix product, which
            # rounds differently for some shapes (measured), and a row must not depend on its company.
            width = max(count, 2)
            per_slot = _rows(x, width).unsqueeze(1)
            rows = _rows(out, width).unsqueeze(1)
            for rank in batch.decode_lora:
                a, b = self.a[rank][layer][group][:width], self.b[rank][layer][group][:width]
                rows = torch.baddbmm(rows, torch.bmm(per_slot, a), b)
            if batch.decode_dora:
                rows = rows * self.magnitude[layer][group][:width].unsqueeze(1)
            out[:count] = rows[:count, 0]
        elif batch.decode_lora:
            count = batch.decode_count
            slots = batch.decode_slots
            # One row per slot (zeros where a slot has no decode row this step): same shapes every step.
            per_slot = x.new_zeros(self.forward.max_slots + 1, 1, x.shape[1])
            per_slot[slots] = x[:count].unsqueeze(1)
            rows = out[:count]
            for rank in batch.decode_lora:  # a slot's factors are zero in every class but its own
                a, b = self.a[rank][layer][group], self.b[rank][layer][group]
                rows = rows + torch.bmm(torch.bmm(per_slot, a), b)[slots, 0]
            if batch.decode_dora:
                rows = rows * self.magnitude[layer][group][slots]
            out[:count] = rows  # `out` is this step's own product: updating it in place is safe
        for start, length, slot, _ in batch.lora_prefills:
            rank = self.slot_class[slot]
            assert rank is not None
            a, b = self.a[rank][layer][group][slot], self.b[rank][layer][group][slot]
            rows = out[start:start + length]
            rows.addmm_(x[start:start + length] @ a, b)  # in place: `out` is this step's own product
            if self.has_dora[slot]:
                rows.mul_(self.magnitude[layer][group][slot])
        return out


def _rows(t: torch.Tensor, count: int) -> torch.Tensor:
    """The first `count` rows of `t`, zero rows added where it has fewer (an unpadded batch of one row)."""
    if t.shape[0] >= count:
        return t[:count]
    return torch.cat([t, t.new_zeros(count - t.shape[0], *t.shape[1:])])
