"""An adapter as the engine computes it, whatever its peft type, and how a directory becomes one.

`AdapterWeights` holds what a row of a batch needs to compute its adapter beside rows of other adapters in
the same forward pass, never merging anything into the base weights:

* LoRA factors per fused module group (serving.lora): LoRA, rsLoRA, DoRA, and everything saved as plain LoRA
  (PiSSA, OLoRA, CorDA, EVA, LoftQ are converted at training time); weighted compositions of LoRA adapters;
* IA3 scales per module group (serving.ia3): a vector multiplying a module's output, or its input for
  feed-forward modules;
* a virtual prefix (serving.prefixes): the keys and values of every layer at the virtual tokens of prompt
  tuning, p-tuning or prefix tuning, which a sequence's KV cache starts with; its own tokens follow at the
  positions after them.

Each is exact arithmetic on the rows that carry it (tests/serving/test_model.py checks every type against
peft). What the engine cannot compute exactly (trained biases, replaced modules or token embeddings,
Conv1D models) is refused with `unsupported_adapter`, never approximated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from adapters.files import CONFIG, load_tensors
from contracts.errors import InvalidRequest

if TYPE_CHECKING:
    from serving.model import LlamaForward


@dataclass
class GroupFactors:
    a: torch.Tensor  # [in, rank]
    b: torch.Tensor  # [rank, out], scale folded in
    magnitude: torch.Tensor | None  # [out] DoRA factor, or None

    @property
    def rank(self) -> int:
        return int(self.a.shape[1])


@dataclass
class GroupScales:
    """IA3 on one module group, in float32 (peft computes its scaling in the adapter's dtype)."""

    #: [in]: multiplies the group's input (feed-forward modules), or None
    inputs: torch.Tensor | None
    #: [out, every member]: multiplies the group's output (ones for members the adapter leaves alone), or None
    outputs: torch.Tensor | None


@dataclass
class AdapterWeights:
    key: str
    #: LoRA: layer -> group -> factors (groups the adapter does not touch are absent; empty for other types)
    layers: list[dict[str, GroupFactors]]
    uses_dora: bool
    #: group -> how many modules it stacks (the base model's; a group's rank may be up to that many times
    #: the per-module maximum)
    group_sizes: dict[str, int]
    #: IA3: layer -> group -> scales (empty for other types)
    scales: list[dict[str, GroupScales]] = field(default_factory=list)
    #: Prompt learning: the keys and values of the virtual tokens, [layers, 2, kv_heads, tokens, head_dim] as a
    #: KV cache holds them (RoPE applied where the model applies it), or None
    prefix: torch.Tensor | None = None
    #: LoRA on the output layer (lm_head, "unembed"): a [hidden, rank], b [rank, vocabulary] with the scale folded
    #: in, added to the logits of the rows that carry the adapter; None: the base model's output layer
    unembed: GroupFactors | None = None

    @property
    def has_lora(self) -> bool:
        """LoRA factors on decoder layers (the output layer's are `unembed`)."""
        return any(self.layers)

    @property
    def has_scales(self) -> bool:
        return any(self.scales)

    @property
    def virtual_tokens(self) -> int:
        """Positions the virtual prefix takes before the sequence's own tokens (0: none)."""
        return 0 if self.prefix is None else int(self.prefix.shape[3])

    @property
    def nbytes(self) -> int:
        total = 0
        tensors: list[torch.Tensor | None] = []
        for groups in self.layers:
            for f in groups.values():
                tensors += [f.a, f.b, f.magnitude]
        for scaled in self.scales:
            for s in scaled.values():
                tensors += [s.inputs, s.outputs]
        tensors.append(self.prefix)
        if self.unembed is not None:
            tensors += [self.unembed.a, self.unembed.b]
        for tensor in tensors:
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
        return total


#: The peft types the engine computes.
SERVED_TYPES = frozenset({"LORA", "IA3", "PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"})


def unsupported(message: str, *, param: str = "model") -> InvalidRequest:
    return InvalidRequest(message, code="unsupported_adapter", param=param)


def mismatch(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="adapter_base_mismatch", param="model")


def read_adapter(directory: Path, forward: LlamaForward, *, key: str, max_rank: int) -> AdapterWeights:
    """Validate a peft adapter directory against the served base model and convert it for the engine."""
    from serving import ia3, lora, prefixes

    config = json.loads((directory / CONFIG).read_text())
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type not in SERVED_TYPES:
        raise unsupported(f"{peft_type or 'unknown'} adapters cannot be served; ftaas serves LoRA (rsLoRA, DoRA, "
                          "and PiSSA/OLoRA/CorDA saved as LoRA), IA3, prompt tuning, p-tuning and prefix tuning")
    if config.get("modules_to_save") or config.get("trainable_token_indices"):
        raise unsupported("adapters that replace whole modules or token embeddings cannot be batch-served")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise unsupported("adapters with trained biases cannot be batch-served")
    if config.get("fan_in_fan_out"):
        raise unsupported("fan_in_fan_out adapters (Conv1D models) are not supported")
    # Dense weights, or ComPEFT-compressed ones decompressed here (adapters.compress).
    tensors = load_tensors(directory)
    if peft_type == "LORA":
        return lora.read_lora(config, tensors, forward, key=key, max_rank=max_rank)
    if peft_type == "IA3":
        return ia3.read_ia3(tensors, forward, key=key)
    if peft_type == "PREFIX_TUNING":
        return prefixes.read_prefix(config, tensors, forward, key=key)
    return prefixes.read_prompt(config, tensors, forward, key=key)


def compose(parts: list[tuple[AdapterWeights, float]], *, key: str, max_rank: int) -> AdapterWeights:
    """The exact weighted sum of LoRA adapters: sum_i w_i B_i A_i x, as one adapter of the summed rank."""
    if any(adapter.has_scales or adapter.prefix is not None for adapter, _ in parts):
        raise unsupported("only LoRA adapters can be composed (IA3 scales and virtual prefixes do not add up)",
                          param="adapters")
    if any(adapter.uses_dora for adapter, _ in parts):
        raise unsupported("DoRA adapters cannot be composed (their magnitude rescaling is not additive)",
                          param="adapters")
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
    heads = [(adapter.unembed, weight) for adapter, weight in parts if adapter.unembed is not None]
    unembed = None if not heads else GroupFactors(a=torch.cat([f.a for f, _ in heads], 1).contiguous(),
                                                  b=torch.cat([f.b * w for f, w in heads], 0).contiguous(),
                                                  magnitude=None)
    return AdapterWeights(key=key, layers=layers, uses_dora=False, group_sizes=sizes, unembed=unembed)
