"""How a job computes, decided once before its first step: the precision, the attention kernel of packed
rows, and the loss path.

* Precision: bf16 autocast where the device computes bf16 natively, else fp32 (`autocast_dtype`); the
  frozen base's Linear weights are then stored in bf16 once (`store_frozen_linears`).
* Packed rows: where a kernel attends within each packed example (worker.training.attention), a step's
  examples go in one row with no padding and no mask (`Kernels.capacity` None); otherwise rows of bounded
  width, over the block-diagonal mask transformers builds from the position ids.
* The loss path: a packed row scores only the positions that have a target (`logits_to_keep`, where the
  model takes it), and where the model's logits are exactly its output layer's product, that layer is
  applied chunk by chunk inside the loss (`probe_head`; worker.training.loss). Not under FSDP, whose output
  layer is sharded.
* Memory on the CPU: the process keeps the memory it frees for its next allocations (`keep_freed_memory`),
  and gives it back once the job is over (`return_freed_memory`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import inspect
import sys
from dataclasses import dataclass
from typing import Any

import torch

from basemodels.loader import BaseModelLoader
from contracts.machine import ThreadGovernor
from contracts.training.spec import TrainingSpec
from worker.training import attention
from worker.training.loss import head_computes_logits


@dataclass
class Kernels:
    #: the autocast dtype (bf16), or None: fp32
    dtype: torch.dtype | None
    #: supervised examples packed into rows (never for prompt learning, whose virtual tokens are per example)
    packing: bool
    #: the widest packed row, or None: one row per step (a kernel that attends per example)
    capacity: int | None
    #: one packed row computes logits only at the positions that have a target
    keeps_positions: bool


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware runs it natively, else None (fp32)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        supported = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
            torch.cpu, "_is_amx_tile_supported", lambda: False)()
        return torch.bfloat16 if supported else None
    return None


def measured_precision(loader: BaseModelLoader, base_model: str, device: torch.device,
                       governor: ThreadGovernor) -> str:
    """"bf16" (autocast) or "fp32" for training `base_model` here. On a CPU: whichever measured faster for the
    model's shapes on this machine (serving.fast_paths, timed as batch work under `governor` so that serving
    yields meanwhile; cached next to the models, so that the machine's jobs agree, unless a chat computed during
    the measurement); elsewhere, or for a config without the shapes the measurement needs: bf16 where the
    hardware computes it natively."""
    if device.type == "cpu":
        from serving.fast_paths import measured_dtype

        try:
            chosen = measured_dtype(loader.config(base_model), "train", cache_dir=loader.cache_dir, governor=governor)
            return "bf16" if chosen == torch.bfloat16 else "fp32"
        except (KeyError, TypeError, ValueError):
            pass
    return "bf16" if autocast_dtype(device) is not None else "fp32"


def choose(spec: TrainingSpec, model: Any, device: torch.device, *, precision: str = "auto") -> Kernels:
    """The kernels for `spec` on `device` (`precision` "fp32" or "bf16" forces that; "auto": bf16 autocast where
    the device computes it natively). Sets the model's attention
    implementation for packed rows where a per-example kernel exists, so call it before wrapping the model."""
    if device.type == "cpu":
        keep_freed_memory()
    dtype = {"fp32": None, "bf16": torch.bfloat16}.get(precision, autocast_dtype(device) if precision == "auto"
                                                       else None)
    capacity: int | None = min(spec.max_seq_len, getattr(model.config, "max_position_embeddings", spec.max_seq_len))
    packing = spec.packing and spec.method == "supervised" and not spec.adapter.is_prompt_learning
    implementation = attention.for_packed_rows(model.config, device, half_precision=dtype is not None) \
        if packing else None
    if implementation is not None:
        model.config._attn_implementation = implementation
        capacity = None
    keeps_positions = packing and "logits_to_keep" in inspect.signature(model.forward).parameters
    return Kernels(dtype=dtype, packing=packing, capacity=capacity, keeps_positions=keeps_positions)


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


@functools.cache
def _glibc() -> Any:
    """The C library where it is glibc on Linux (it has mallopt and malloc_trim), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None  # musl has neither


def keep_freed_memory() -> bool:
    """Make this process keep the memory it frees for its next allocations (Linux with glibc; elsewhere
    nothing changes). Returns whether it did.

    glibc serves every block over 32 MB with its own mapping and unmaps it when freed, so each training step
    maps again, and faults in page by page, the large temporaries it freed a step earlier (logits, attention
    and MLP activations). On a 2-core VM whose page faults are slow (a first touch of 2 GB took 5.7 s), serving
    them from the heap and not trimming it made steps 15-35 % faster and the step's peak 2-9 % higher (measured
    with bench/train_throughput.py and bench/train_memory.py; docs/training.md). A training process reuses the
    same sizes every step, so the memory kept is the step's own high-water mark, which the memory estimate
    counts (its CPU `heap` term)."""
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def return_freed_memory() -> None:
    """Undo `keep_freed_memory` once a job's training is over, and hand the freed heap back to the system:
    a long-lived worker process would otherwise hold its last job's peak for as long as it lives, memory that
    serving and the next job on the machine need. Call it after the job's model and trainer are released."""
    libc = _glibc()
    if libc is None:
        return
    mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    # glibc's defaults (mallopt(3)); setting them fixes the thresholds, which glibc otherwise adapts
    mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
    malloc_trim(0)


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """The autocast context of a forward pass (a disabled one for fp32)."""
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def enable_gradient_checkpointing(peft_model: Any) -> None:
    """Non-reentrant checkpointing of the frozen base: its inputs need no requires_grad for the adapter to get
    its gradients, and it works with the packed attention's unbind/split."""
    base = peft_model.get_base_model()
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x renamed it
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def store_frozen_linears(model: Any, dtype: torch.dtype) -> None:
    """Keep the frozen base's Linear weights in the autocast dtype.

    Autocast casts a matmul's fp32 weight to bf16 on every call unless the weight requires grad (it caches
    only those), so a frozen base was re-cast at every forward and backward (measured: 7 % of a step, with
    bench/train_throughput.py). Storing the same bf16 values once changes no matrix product. Where the output
    layer shares its weight with the input embeddings (tied, as in SmolLM2), the embeddings become bf16 too
    and the residual stream runs in bf16, as it does when a model is loaded in bf16 (TRL's and Axolotl's
    usual setting); the norms and the adapter stay fp32. Not for DoRA (the caller's rule): it also reads the
    base weight outside matmuls (for its weight norm).
    """
    for module in model.modules():
        # (quantized Linears hold packed integers: they stay as they are)
        if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad \
                and module.weight.dtype.is_floating_point and not _is_quantized(module):
            module.to(dtype)


def probe_head(peft_model: Any, probe_ids: list[int], device: torch.device, dtype: torch.dtype | None) -> Any:
    """The output layer to apply inside the chunked loss, or None where the model's logits are not exactly
    its product (softcapping, scaling): one forward pass over `probe_ids` decides (worker.training.loss)."""
    with autocast(device, dtype):
        return head_computes_logits(peft_model.get_base_model(), probe_ids)


def _is_quantized(module: Any) -> bool:
    return type(module).__module__.startswith("bitsandbytes")
