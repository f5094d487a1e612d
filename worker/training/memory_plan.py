"""Before training: the step's estimated peak memory against the training device, and what follows from it.

`plan_memory` decides how a job's processes hold the model where the worker's `training_parallelism` is
"auto" (FSDP only when a full copy per process would not fit even with gradient checkpointing: sharding
costs communication at every layer), then `gradient_checkpointing` where the job left it at "auto" (on only
when the step would not fit without it: it costs ~30 % more compute), and says when a job cannot fit, so that job
fails at once with the estimate in its error instead of running out of memory hours in. Job validation
(worker.jobs.preparation) asks the same question before the job queues; the worker asks again on its own
device before it loads the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from contracts.training.spec import TrainingSpec
from worker.training.distributed import sharding_unsupported
from worker.training.memory_estimate import HEADROOM, MemoryEstimate, estimate_peak_memory, fits


def largest_step_tokens(lengths: list[int], spec: TrainingSpec, processes: int = 1) -> int:
    """Tokens of the largest step one process can get: its share of the batch, the longest examples
    (each capped at max_seq_len)."""
    per_process = max(1, -(-spec.batch_size // processes))
    return sum(sorted((min(n, spec.max_seq_len) for n in lengths), reverse=True)[:per_process])


def device_memory_bytes(device: str, configured: int | None = None) -> int:
    """The training device's memory: the configured figure, else the CUDA device's total, else the host's
    physical memory (CPU training)."""
    if configured:
        return configured
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class MemoryPlan:
    gradient_checkpointing: bool
    estimate: MemoryEstimate
    device_bytes: int
    #: why the job cannot run on this device (None: it can)
    refusal: str | None = None
    #: FSDP: the processes shard the model (worker.training.distributed)
    sharded: bool = False

    def describe(self) -> str:
        return (f"Estimated peak memory per training process: {self.estimate.describe()}, of "
                f"{self.device_bytes / 1024 ** 3:.1f} GiB on the training device")


def plan_memory(config: dict[str, Any], spec: TrainingSpec, *, device_bytes: int, processes: int = 1,
                compute_bytes: int = 2, tokens_per_step: int | None = None,
                parallelism: str = "auto", host_memory: bool = False) -> MemoryPlan:
    """Sharding as the worker is set (`parallelism` "ddp", "fsdp", or "auto": FSDP only where a full copy per
    process cannot fit and the job can be sharded), checkpointing as asked or (auto) only where the step does
    not fit without it; a refusal where it does not fit as asked (or at all). `tokens_per_step`: see
    `estimate_peak_memory`; `host_memory`: the training device is the CPU."""
    unshardable = sharding_unsupported(spec)

    def estimate(checkpointing: bool, sharded: bool = False) -> MemoryEstimate:
        return estimate_peak_memory(config, spec, processes=processes, compute_bytes=compute_bytes,
                                    gradient_checkpointing=checkpointing, tokens_per_step=tokens_per_step,
                                    sharded=sharded, host_memory=host_memory)

    if processes > 1 and parallelism == "fsdp" and unshardable:
        return MemoryPlan(bool(spec.gradient_checkpointing), estimate(bool(spec.gradient_checkpointing)),
                          device_bytes, f"This worker trains with FSDP (training_parallelism=fsdp), and {unshardable}.")
    sharded = processes > 1 and (parallelism == "fsdp" or (
        parallelism == "auto" and unshardable is None and not fits(estimate(True), device_bytes)))

    if spec.gradient_checkpointing is None:
        without = estimate(False, sharded)
        chosen = without if fits(without, device_bytes) else estimate(True, sharded)
    else:
        chosen = estimate(spec.gradient_checkpointing, sharded)
    refusal = None
    if not fits(chosen, device_bytes):
        hints = "a shorter max_seq_len, a smaller batch_size"
        if not chosen.gradient_checkpointing:
            hints = "gradient_checkpointing, " + hints
        more = "more training processes" + ("" if unshardable is None else
                                            f" (they could not share the weights: {unshardable})")
        refusal = (f"This job's training step needs an estimated {chosen.describe()}, more than "
                   f"{HEADROOM:.0%} of the {device_bytes / 1024 ** 3:.1f} GiB of the training device. "
                   f"Try {hints}, or {more}.")
    return MemoryPlan(chosen.gradient_checkpointing, chosen, device_bytes, refusal, sharded=chosen.sharded)
