"""IA3 adapters as the engine computes them: learned vectors that rescale activations (Liu et al., 2022).

peft's IA3 multiplies a target module's output by a vector `l` ([out, 1] in the file), or, for a
feed-forward module, its input ([1, in]): `W(x * l)`. Both are elementwise per row, so a row with an IA3
adapter shares its batch with LoRA rows and base rows at no extra product: the engine multiplies each row
by its own slot's scales (ones for every other row, which changes nothing) around the group's one product.

Within a fused group (q/k/v, gate/up), output scales stack member by member with ones for untargeted
members. Input scales are shared by a group's members (they share the input), so an adapter may scale the
input of a fused group only with one vector for all of its members; peft's default (the down projection of
Llama-family models) is a group of its own.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from serving.adapter_weights import AdapterWeights, GroupScales, mismatch, unsupported

if TYPE_CHECKING:
    from serving.model import LlamaForward

_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.ia3_l(?:\.weight)?$")


def read_ia3(tensors: dict[str, torch.Tensor], forward: LlamaForward, *, key: str) -> AdapterWeights:
    """An IA3 adapter's scales, checked against the served base model."""
    g = forward.geometry
    found: dict[tuple[int, str], torch.Tensor] = {}
    for name, tensor in tensors.items():
        match = _KEY.search(name)
        if match is None:
            raise unsupported(f"adapter tensor {name!r} does not belong to a servable decoder module")
        layer, module = int(match.group(1)), match.group(2)
        if module not in forward.module_group or layer >= g.layers:
            raise mismatch(f"adapter tensor {name!r} targets a module the base model does not have")
        found[(layer, module)] = tensor.float()
    if not found:
        raise unsupported("the adapter has no IA3 scales")
    scales: list[dict[str, GroupScales]] = [{} for _ in range(g.layers)]
    for layer in range(g.layers):
        for group, members in forward.members.items():
            vectors = [(module, found.get((layer, module))) for module in members]
            if all(vector is None for _, vector in vectors):
                continue
            fan_in, outs = g.groups[group]
            inputs = [(module, vector) for module, vector in vectors if vector is not None and vector.shape[0] == 1]
            outputs = [(module, vector) for module, vector in vectors if vector is not None and vector.shape[0] != 1]
            scales[layer][group] = GroupScales(inputs=_input_scales(layer, group, members, inputs, fan_in),
                                               outputs=_output_scales(layer, vectors, outs) if outputs else None)
    return AdapterWeights(key=key, layers=[{} for _ in range(g.layers)], uses_dora=False,
                          group_sizes={group: len(members) for group, members in forward.members.items()},
                          scales=scales)


def _input_scales(layer: int, group: str, members: tuple[str, ...], inputs: list[tuple[str, torch.Tensor]],
                  fan_in: int) -> torch.Tensor | None:
    if not inputs:
        return None
    for module, vector in inputs:
        if vector.shape != (1, fan_in):
            raise mismatch(f"layer {layer} {module}: IA3 input scales of shape {tuple(vector.shape)} do not fit the "
                           f"base model ({fan_in} inputs)")
    first = inputs[0][1]
    if len(inputs) != len(members) or any(not torch.equal(vector, first) for _, vector in inputs):
        raise unsupported(f"layer {layer}: IA3 scales the inputs of {', '.join(m for m, _ in inputs)} but not alike "
                          f"for every module of the fused {group} group, which share one input")
    return first.reshape(-1).contiguous()


def _output_scales(layer: int, vectors: list[tuple[str, torch.Tensor | None]], outs: tuple[int, ...]
                   ) -> torch.Tensor:
    pieces = []
    for (module, vector), out in zip(vectors, outs, strict=True):
        if vector is None or vector.shape[0] == 1:  # untouched, or scaled on its input (checked apart)
            pieces.append(torch.ones(out))
            continue
        if vector.shape != (out, 1):
            raise mismatch(f"layer {layer} {module}: IA3 output scales of shape {tuple(vector.shape)} do not fit the "
                           f"base model ({out} outputs)")
        pieces.append(vector.reshape(-1))
    return torch.cat(pieces).contiguous()
