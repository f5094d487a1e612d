"""The stored form of ComPEFT-compressed adapter weights (written by adapters.compress), and its
reading back into dense tensors.

Per tensor `name`, in a safetensors file (no pickles):

    name.mask    uint8   the kept positions, one bit per entry (numel / 8 bytes), most significant bit first
    name.signs   uint8   one bit per kept entry, 1 = negative (k / 8 bytes)
    name.scale   float32 [1]
    name.shape   int64   the original shape

Every kept entry is its sign times the tensor's one scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Booleans -> uint8, eight per byte, most significant bit first (padded with zeros)."""
    flat = bits.reshape(-1).to(torch.uint8)
    padded = torch.zeros((flat.numel() + 7) // 8 * 8, dtype=torch.uint8)
    padded[:flat.numel()] = flat
    return (padded.reshape(-1, 8) * _BITS).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """The first `count` booleans of `pack_bits` output."""
    bits = (packed.reshape(-1, 1) & _BITS) != 0
    return bits.reshape(-1)[:count]


@dataclass(frozen=True)
class Ternary:
    """One compressed tensor: kept positions, their signs, one scale."""

    shape: tuple[int, ...]
    mask: torch.Tensor  # packed bits, one per entry
    signs: torch.Tensor  # packed bits, one per kept entry (1 = negative)
    scale: float

    @property
    def nbytes(self) -> int:
        return self.mask.numel() + self.signs.numel() + 4 + 8 * len(self.shape)


def dequantize(ternary: Ternary, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    count = 1
    for size in ternary.shape:
        count *= size
    mask = unpack_bits(ternary.mask, count)
    negative = unpack_bits(ternary.signs, int(mask.sum()))
    dense = torch.zeros(count, dtype=torch.float32)
    dense[mask] = torch.where(negative, -ternary.scale, ternary.scale)
    return dense.reshape(ternary.shape).to(dtype)


def to_safetensors(compressed: Mapping[str, Ternary]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, ternary in compressed.items():
        out[f"{name}.mask"] = ternary.mask
        out[f"{name}.signs"] = ternary.signs
        out[f"{name}.scale"] = torch.tensor([ternary.scale], dtype=torch.float32)
        out[f"{name}.shape"] = torch.tensor(ternary.shape, dtype=torch.int64)
    return out


def from_safetensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, Ternary]:
    names = sorted({key.rsplit(".", 1)[0] for key in tensors})
    result = {}
    for name in names:
        missing = [part for part in ("mask", "signs", "scale", "shape") if f"{name}.{part}" not in tensors]
        if missing:
            raise ValueError(f"compressed tensor {name!r} lacks {', '.join(missing)}")
        result[name] = Ternary(tuple(int(v) for v in tensors[f"{name}.shape"].tolist()), tensors[f"{name}.mask"],
                               tensors[f"{name}.signs"], float(tensors[f"{name}.scale"][0]))
    return result


def decompress(compressed: Mapping[str, Ternary], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {name: dequantize(ternary, dtype) for name, ternary in compressed.items()}
