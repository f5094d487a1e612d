"""Data parallelism for the trainer: which examples a process takes, and the collectives it needs.

One job can train on several processes (GPUs on a node; on CPU, several processes with the gloo backend):
each takes every `world_size`-th example of each step's batch, the gradients are averaged over the
processes, and the trainer reduces loss sums and counts so that metrics and gradients equal the
single-process run's. `DistributedContext.single()` is the one-process case, where every collective is a
no-op.

Two ways to hold the model (`sharded`):

* DDP (DistributedDataParallel): every process holds the whole model; gradients are all-reduced.
* FSDP (PyTorch's `fully_shard`, FSDP2): every parameter (frozen base weights, adapter, and so the
  optimizer's moments) is split across the processes along its first dimension; each decoder layer is
  gathered just before it runs and freed after, so a process holds 1/world_size of the weights plus about
  two layers at a time. It is the mode for models whose weights do not fit one device. Adapter and
  optimizer tensors are DTensors then: `full_tensors` gathers them for a checkpoint (every process takes
  part; the main one writes) and `distribute_like` splits a checkpoint's full tensors back, so a checkpoint
  has the same files and layout in both modes.
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

from contracts.training.spec import TrainingSpec

T = TypeVar("T")


#: Adapter types trained sharded (FSDP): their parameters live in the decoder layers' Linear wrappers.
SHARDABLE_ADAPTERS = ("lora", "rslora", "dora")


def sharding_unsupported(spec: TrainingSpec) -> str | None:
    """Why this job cannot train with FSDP, or None."""
    if spec.adapter.type not in SHARDABLE_ADAPTERS:
        return f"FSDP trains {', '.join(SHARDABLE_ADAPTERS)} adapters, not {spec.adapter.type}"
    if spec.adapter.quantization is not None:
        return "FSDP does not shard a 4-bit (QLoRA) base: its quantization state is lost when sharded"
    if spec.adapter.modifies_base:
        return f"FSDP cannot train the '{spec.adapter.init}' initialisation: it rewrites the base weights"
    return None


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    #: FSDP (see the module docstring) rather than DDP; only meaningful with world_size > 1
    sharded: bool = False

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

    @property
    def fsdp(self) -> bool:
        return self.active and self.sharded

    def wrap(self, model: Any, device: torch.device | None = None) -> Any:
        """The module the training step calls: `model` itself (one process; FSDP, which shards `model` in
        place and moves the shards to `device`, default where the model is) or a DistributedDataParallel
        around it."""
        if not self.active:
            return model
        if self.sharded:
            self._shard(model, device or next(model.parameters()).device)
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [model.device.index] if getattr(model, "device", None) is not None and model.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False)

    def _shard(self, model: Any, device: torch.device) -> None:
        """fully_shard every decoder layer (the unit gathered at a time), then the root for the rest
        (embeddings, final norm, head). Layers are found by the class names the transformers model declares
        as not splittable across devices (`_no_split_modules`)."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (self.world_size,))
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        layer_classes = set(getattr(base, "_no_split_modules", None) or [])
        layers = [module for module in model.modules() if type(module).__name__ in layer_classes]
        if not layers:
            raise ValueError(f"FSDP: no decoder layers ({sorted(layer_classes) or 'none declared'}) found in "
                             f"{type(base).__name__}")
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)

    def full_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The same tensors whole, on the CPU: sharded ones (DTensors) are gathered. A collective under FSDP:
        every process calls it, with the same keys in the same order."""
        from torch.distributed.tensor import DTensor

        return {name: (value.full_tensor() if isinstance(value, DTensor) else value).detach().cpu().contiguous()
                for name, value in tensors.items()}

    @staticmethod
    def distribute_like(value: torch.Tensor, like: Any) -> torch.Tensor:
        """`value` (a whole tensor) split as `like` is, where `like` is sharded (a DTensor); else as it is.
        A collective for sharded tensors (every process calls it, in the same order)."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        if not isinstance(like, DTensor) or not isinstance(value, torch.Tensor) or value.dim() == 0:
            return value
        return distribute_tensor(value.to(like.device, like.dtype), like.device_mesh, like.placements)

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
