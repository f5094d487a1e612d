"""The optimizer and the run's schedule: AdamW over the adapter's parameters, the learning-rate schedule
with warm-up, how many steps the run has, and at which of them it checkpoints.

Steps: ceil(examples / batch_size) per epoch, `n_epochs` epochs. Checkpoints: one at the end of every epoch
by default, else `n_checkpoints` spread evenly with the last at the end. All pure functions of the spec and
the number of examples, so a resumed run has the same schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from contracts.training.spec import TrainingSpec


@dataclass(frozen=True)
class Schedule:
    steps_per_epoch: int
    total_steps: int
    #: the steps after which a checkpoint is saved
    checkpoints: frozenset[int]

    @classmethod
    def of(cls, spec: TrainingSpec, examples: int) -> Schedule:
        steps_per_epoch = math.ceil(examples / spec.batch_size)
        total = steps_per_epoch * spec.n_epochs
        return cls(steps_per_epoch, total, frozenset(checkpoint_steps(total, steps_per_epoch, spec.n_checkpoints)))


def checkpoint_steps(total_steps: int, steps_per_epoch: int, n_checkpoints: int | None) -> set[int]:
    """One at the end of every epoch by default; else `n_checkpoints` spread evenly (the last at the end)."""
    if n_checkpoints is None:
        return set(range(steps_per_epoch, total_steps + 1, steps_per_epoch)) | {total_steps}
    count = min(n_checkpoints, total_steps)
    return {math.ceil(total_steps * k / count) for k in range(1, count + 1)}


def lr_factor(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """The learning rate's multiplier at each step: linear warm-up, then constant, cosine or linear decay."""
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)
    return factor


def build_optimizer(trainable: list[torch.nn.Parameter], spec: TrainingSpec, total_steps: int
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no weight decay on adapters) and its learning-rate schedule over `total_steps`."""
    optimizer = torch.optim.AdamW(trainable, lr=spec.learning_rate, weight_decay=0.0)
    warmup = round(total_steps * spec.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(spec.lr_scheduler, warmup, total_steps))
    return optimizer, scheduler
