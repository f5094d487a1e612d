"""Scoring the adapter without training it: validation during the run and the final pass over the
training data.

* `evaluate`: loss and accuracy over examples (token accuracy for supervised runs, the share of pairs whose
  chosen reply wins for DPO), in eval mode, split across the data-parallel processes and summed over them.
* `ValidationCursor`: the validation batches of `eval_interval` steps, cycling through the validation
  examples; its position is part of a checkpoint so that a resumed run validates on what it would have.
* `final_pass_sample`: the training examples the final pass scores (all, or FINAL_PASS_EXAMPLES evenly
  spaced: the pass costs a forward per example and half an epoch of a one-epoch job was measured,
  docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from worker.training.distributed import DistributedContext
from worker.training.objectives import Objectives

#: The final pass over the training data (supervised) scores at most this many examples, evenly spaced.
FINAL_PASS_EXAMPLES = 512


@torch.no_grad()
def evaluate(objectives: Objectives, network: Any, examples: list[Any], *, batch_size: int,
             dist: DistributedContext) -> tuple[float, float]:
    """Loss and accuracy over `examples` (split across processes), with `network` in eval mode."""
    network.eval()
    try:
        loss_total = correct_total = count_total = 0.0
        local = dist.shard(examples)
        step = max(1, batch_size)
        # Under FSDP every forward pass gathers weights with every process, so all make as many passes
        # (a process with fewer examples scores one again and counts nothing).
        most = -(-len(examples) // dist.world_size) if dist.fsdp else len(local)
        for start in range(0, most, step):
            chunk = local[start:start + step]
            with objectives.autocast():
                sums = objectives.sums(chunk or examples[:1], objectives.model)
            if not chunk:
                continue
            loss_total += float(sums[0])
            count_total += sums[1]
            correct_total += sums[2]
        loss_total, correct_total, count_total = dist.sum_floats(loss_total, correct_total, count_total)
        return loss_total / max(1.0, count_total), correct_total / max(1.0, count_total)
    finally:
        network.train()


class ValidationCursor:
    """Where the next validation batch starts in the validation examples (cycling)."""

    def __init__(self, examples: Sequence[Any], batch_size: int, position: int = 0) -> None:
        self.examples = examples
        self.size = max(1, batch_size)
        self.position = position

    def next_batch(self) -> list[Any]:
        batch = [self.examples[(self.position + i) % len(self.examples)] for i in range(self.size)]
        self.position = (self.position + self.size) % len(self.examples)
        return batch


def final_pass_sample(count: int) -> list[int]:
    """Indices of the training examples the final pass scores: all, or FINAL_PASS_EXAMPLES evenly spaced."""
    if count <= FINAL_PASS_EXAMPLES:
        return list(range(count))
    return [index * count // FINAL_PASS_EXAMPLES for index in range(FINAL_PASS_EXAMPLES)]
