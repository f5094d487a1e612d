"""Per-slot copies of each running sequence's adapter, so that every row of a batch computes its own adapter
in one forward pass: LoRA (and DoRA) factors, and IA3 scales. A virtual prefix (prompt learning) needs no
slot buffer: it is the start of the sequence's KV cache (serving.engine).

LoRA: a decode step multiplies every slot's row by that slot's own factors in one batched product per rank
class (`bmm`: one small problem per slot, the same shapes every step), so rows with different adapters,
or none, share the pass. An adapter's class (8, 16, 32, ... up to the served maximum) depends only on
the adapter, never on the batch: a row's numbers are the same alone or batched, and an r=8 adapter
does not pay for the largest rank served.

IA3: each row is multiplied by its slot's input and output scales, gathered by the step's row-to-slot map
(every slot without IA3, and padding, holds ones: multiplying by them is exact). Elementwise, so a row's
result does not depend on its company either.

Filling a slot costs one copy when a sequence joins; a slot freed in the middle is refilled by the last one
(`move`), so running slots stay contiguous.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from serving.adapter_weights import AdapterWeights, GroupFactors
from serving.lora import rank_classes

if TYPE_CHECKING:
    from serving.model import LlamaForward, StepBatch


class SlotAdapters:
    def __init__(self, forward: LlamaForward, *, max_rank: int) -> None:
        self.forward = forward
        self.classes = rank_classes(max_rank)
        #: one slot more than sequences run: `spare` never holds an adapter (padding rows read it)
        slots = forward.max_slots + 1
        self.spare = forward.max_slots
        dtype, device = forward.dtype, forward.device
        dims = forward.group_dims()
        #: class -> layer -> group -> [slots, in, class x members] / [slots, class x members, out]. A class's
        #: buffers are made when the first adapter of that class arrives: every class for every slot of a
        #: 135M model is 6.6 GB (measured: two such engines, the API's and an eval worker's, ran a 24 GiB
        #: machine out of memory; docs/benchmarks.md, "Measurements behind code comments"), and a server with no adapter, or only
        #: r=8 ones, needs none or one.
        self.a: dict[int, list[dict[str, torch.Tensor]]] = {}
        self.b: dict[int, list[dict[str, torch.Tensor]]] = {}
        self.magnitude = [{group: torch.ones(slots, fan_out, dtype=dtype, device=device)
                           for group, (_, fan_out) in dims.items()} for _ in range(forward.geometry.layers)]
        self.slot_class: list[int | None] = [None] * slots
        self.has_dora = [False] * slots
        #: per slot: the key of its LoRA adapter (None: none)
        self.slot_key: list[str | None] = [None] * slots
        #: Decode rows that all run one LoRA adapter are computed as one product with its factors instead of
        #: one per slot (the policy sampler: every sample of a step runs the adapter being trained; measured in
        #: docs/benchmarks.md). Off for serving: a row's result then depends on how many rows share it.
        self.shared_products = False
        #: IA3: layer -> group -> [slots, in] / [slots, out] float32 scales, ones where a slot has none; made
        #: when the first IA3 adapter arrives
        self.input_scales: list[dict[str, torch.Tensor]] = []
        self.output_scales: list[dict[str, torch.Tensor]] = []
        #: per slot: the groups whose inputs / outputs its adapter scales (empty: no IA3)
        self.scaled_inputs: list[frozenset[str]] = [frozenset()] * slots
        self.scaled_outputs: list[frozenset[str]] = [frozenset()] * slots
        #: per slot: its adapter's output-layer (lm_head) LoRA factors, or None (few rows a step need them: one
        #: logits row per sequence, so they stay the adapter's own tensors, not slot buffers)
        self.unembed: list[GroupFactors | None] = [None] * slots

    # ----------------------------------------------------------------------------------- buffers
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

    def _allocate_scales(self) -> None:
        if self.input_scales:
            return
        forward, slots = self.forward, self.forward.max_slots + 1
        dims = forward.group_dims()
        self.input_scales = [{group: torch.ones(slots, fan_in, device=forward.device) for group, (fan_in, _) in dims.items()}
                             for _ in range(forward.geometry.layers)]
        self.output_scales = [{group: torch.ones(slots, fan_out, device=forward.device)
                               for group, (_, fan_out) in dims.items()} for _ in range(forward.geometry.layers)]

    def class_of(self, adapter: AdapterWeights) -> int:
        needed = max(-(-f.rank // adapter.group_sizes[group]) for layer in adapter.layers for group, f in layer.items())
        return next(c for c in self.classes if c >= needed)

    # ----------------------------------------------------------------------------------- slots
    def assign(self, slot: int, adapter: AdapterWeights | None) -> None:
        self._clear(slot)
        if adapter is None:
            return
        self.unembed[slot] = adapter.unembed
        if adapter.has_lora:
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
            self.slot_key[slot] = adapter.key
        if adapter.has_scales:
            self._allocate_scales()
            inputs, outputs = set(), set()
            for index, groups in enumerate(adapter.scales):
                for group, scales in groups.items():
                    if scales.inputs is not None:
                        self.input_scales[index][group][slot].copy_(scales.inputs)
                        inputs.add(group)
                    if scales.outputs is not None:
                        self.output_scales[index][group][slot].copy_(scales.outputs)
                        outputs.add(group)
            self.scaled_inputs[slot], self.scaled_outputs[slot] = frozenset(inputs), frozenset(outputs)

    def _clear(self, slot: int) -> None:
        previous = self.slot_class[slot]
        for index in range(len(self.magnitude)):
            for group in self.forward.members:
                if previous is not None:
                    self.a[previous][index][group][slot].zero_()
                    self.b[previous][index][group][slot].zero_()
                    self.magnitude[index][group][slot].fill_(1.0)
                if group in self.scaled_inputs[slot]:
                    self.input_scales[index][group][slot].fill_(1.0)
                if group in self.scaled_outputs[slot]:
                    self.output_scales[index][group][slot].fill_(1.0)
        self.slot_class[slot] = None
        self.has_dora[slot] = False
        self.slot_key[slot] = None
        self.scaled_inputs[slot] = self.scaled_outputs[slot] = frozenset()
        self.unembed[slot] = None

    def move(self, source: int, target: int) -> None:
        """Give `target` the adapter of `source` (exact copies) and clear `source`."""
        self._clear(target)
        rank = self.slot_class[source]
        for index in range(len(self.magnitude)):
            for group in self.forward.members:
                if rank is not None:
                    self.a[rank][index][group][target].copy_(self.a[rank][index][group][source])
                    self.b[rank][index][group][target].copy_(self.b[rank][index][group][source])
                    self.magnitude[index][group][target].copy_(self.magnitude[index][group][source])
                if group in self.scaled_inputs[source]:
                    self.input_scales[index][group][target].copy_(self.input_scales[index][group][source])
                if group in self.scaled_outputs[source]:
                    self.output_scales[index][group][target].copy_(self.output_scales[index][group][source])
        self.slot_class[target] = rank
        self.has_dora[target] = self.has_dora[source]
        self.slot_key[target] = self.slot_key[source]
        self.scaled_inputs[target], self.scaled_outputs[target] = self.scaled_inputs[source], self.scaled_outputs[source]
        self.unembed[target] = self.unembed[source]
        self._clear(source)

    # ----------------------------------------------------------------------------------- products
    def scale_inputs(self, x: torch.Tensor, layer: int, group: str, batch: StepBatch) -> torch.Tensor:
        """x with every row multiplied by its slot's IA3 input scales, in float32 as peft computes them."""
        assert batch.row_slots is not None
        return (x.float() * self.input_scales[layer][group][batch.row_slots]).to(x.dtype)

    def scale_outputs(self, out: torch.Tensor, layer: int, group: str, batch: StepBatch) -> torch.Tensor:
        """out with every row multiplied by its slot's IA3 output scales, in float32 as peft computes them."""
        assert batch.row_slots is not None
        return (out.float() * self.output_scales[layer][group][batch.row_slots]).to(out.dtype)

    def apply(self, out: torch.Tensor, x: torch.Tensor, layer: int, group: str, batch: StepBatch) -> torch.Tensor:
        """out: the base product for every row; returns it with each row's own LoRA (and DoRA) applied."""
        if batch.decode_shared_slot is not None:  # every decode row runs one adapter: one product (shared_products)
            slot = batch.decode_shared_slot
            rank = self.slot_class[slot]
            assert rank is not None
            rows = out[:batch.decode_count]
            rows.addmm_(x[:batch.decode_count] @ self.a[rank][layer][group][slot], self.b[rank][layer][group][slot])
            if self.has_dora[slot]:
                rows.mul_(self.magnitude[layer][group][slot])
        elif batch.decode_lora and batch.decode_contiguous:
            # Decode row i is slot i: plain views, no gathers.
            count = batch.decode_count
            # At least two slots: torch dispatches a bmm over a batch of one to a plain matrix product, which
            # rounds differently for some shapes (measured: docs/benchmarks.md, "Measurements behind code comments"), and a row must not
            # depend on its company.
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
            slot_rank = self.slot_class[slot]
            assert slot_rank is not None
            a, b = self.a[slot_rank][layer][group][slot], self.b[slot_rank][layer][group][slot]
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
