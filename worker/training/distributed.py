"""Data parallelism for the trainer: which examples a process takes, and the collectives it needs.

One job can train on several processes (GPUs on a node; on CPU, several processes with the gloo backend):
each takes every `world_size`-th example of each step's batch, DistributedDataParallel averages gradients,
and the trainer reduces loss sums and counts so that metrics and gradients equal the single-process run's.
`DistributedContext.single()` is the one-process case, where every collective is a no-op.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def single(cls) -> DistributedContext:
        return cls(0, 1)

    @classmethod
    def initialise(cls, rank: int, world_size: int, backend: str) -> DistributedContext:
        """Join the process group (MASTER_ADDR/MASTER_PORT come from the launcher's environment)."""
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        return cls(rank, world_size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: Any) -> Any:
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [model.device.index] if getattr(model, "device", None) is not None and model.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False)

    def shard(self, items: Sequence[T]) -> list[T]:
        return list(items[self.rank::self.world_size])

    def sum_int(self, value: int) -> int:
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.long)
        dist.all_reduce(tensor)
        return int(tensor.item())

    def sum_floats(self, *values: float) -> tuple[float, ...]:
        if not self.active:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tuple(float(v) for v in tensor)

    def broadcast_from_main(self, value: str) -> str:
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, value: T) -> list[T]:
        """Every process's `value` on the main process, in rank order (an empty list elsewhere)."""
        if not self.active:
            return [value]
        gathered: list[Any] = [None] * self.world_size if self.is_main else []
        dist.gather_object(value, gathered if self.is_main else None, dst=0)
        return gathered

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def finish_and_exit(self, code: int) -> NoReturn:
        """End a process of a data-parallel group: wait for the others, flush output, leave at once.

        The group is not torn down through destructors on purpose: freeing DistributedDataParallel's reducer
        destroys the gloo process group, whose destructor joins gloo's thread while holding the GIL; when
        that thread still has a Python object to release, the process hangs for ever (seen in this
        project's tests, roughly one run in three).
        """
        if self.active:
            dist.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
