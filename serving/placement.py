"""Where the serving engine runs and in which dtype (torch only: a bare GPU machine's checks import it)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def native_bfloat16(device: str) -> bool:
    """Whether `device` computes bfloat16 products in hardware: a CUDA device that supports it, or a CPU with
    AMX tiles or AVX-512 BF16 (elsewhere torch emulates bfloat16, slower than float32)."""
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())


def serving_placement(dtype: str, device: str, *, measure: Callable[[], torch.dtype] | None = None
                      ) -> tuple[torch.dtype, str]:
    """The serving engine's (dtype, device) for the settings' values ("auto" resolved for this machine: on a
    CPU by `measure` where given (serving.fast_paths), else bfloat16 where the hardware computes it)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        if device == "cpu" and measure is not None:
            return measure(), device
        return (torch.bfloat16 if native_bfloat16(device) else torch.float32), device
    return getattr(torch, dtype), device
