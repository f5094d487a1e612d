"""Batches for the trainer: packed rows (the default) or padded rows.

Packing puts several examples end to end in one row and restarts `position_ids` at every example. With no
attention mask, transformers reads those restarts as sequence boundaries and builds a block-diagonal causal
mask, so no token attends across examples (checked: logits equal to running each example alone, 4e-7).
Each example's first token is never a prediction target (nothing precedes it when run alone), so its label
is cleared in the packed row; the loss of a packed batch then equals the loss of its examples run one by one.
Row padding forms its own position run and carries no labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from worker.training.data import IGNORE, TokenizedExample


@dataclass
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    #: Packed batches: per-row position runs (no attention mask). Padded batches: None.
    position_ids: torch.Tensor | None
    #: Padded batches: 1 for real tokens. Packed batches: None.
    attention_mask: torch.Tensor | None
    #: Real (non-padding) tokens in the batch.
    tokens: int

    def to(self, device: torch.device) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(self.input_ids.to(device), self.labels.to(device), move(self.position_ids),
                     move(self.attention_mask), self.tokens)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids}
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        return inputs


def pad(examples: Sequence[TokenizedExample], pad_id: int) -> Batch:
    """One example per row, right-padded, with an attention mask."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return Batch(ids, labels, None, mask, int(mask.sum()))


def pack(examples: Sequence[TokenizedExample], pad_id: int, capacity: int | None) -> Batch:
    """Examples end to end in rows of at most `capacity` tokens (first fit, in the given order, so the
    layout is a pure function of the batch); `capacity=None`: all of them in one row, with no padding at all.

    One row is for attention that works per example (variable-length kernels): it computes no padding, and
    transformers hands FlashAttention's varlen kernel the examples' boundaries only for a batch of one row.
    Rows of bounded width are for attention over a block-diagonal mask, whose cost grows with the row's
    square."""
    rows: list[list[TokenizedExample]] = []
    sizes: list[int] = []
    for example in examples:
        length = len(example.input_ids)
        for index, size in enumerate(sizes):
            if capacity is None or size + length <= capacity:
                rows[index].append(example)
                sizes[index] += length
                break
        else:
            rows.append([example])
            sizes.append(length)
    width = max(sizes)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for row, members in enumerate(rows):
        start = 0
        for example in members:
            n = len(example.input_ids)
            ids[row, start:start + n] = torch.tensor(example.input_ids)
            labels[row, start:start + n] = torch.tensor(example.labels)
            labels[row, start] = IGNORE
            positions[row, start:start + n] = torch.arange(n)
            start += n
        positions[row, start:] = torch.arange(width - start)
    return Batch(ids, labels, positions, None, sum(sizes))
