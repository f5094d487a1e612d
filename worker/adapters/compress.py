"""ComPEFT-style compression of adapter tensors: sparsify, then ternary-quantise, then pack into bits.

Each tensor t keeps its `density` share of largest-magnitude entries; each kept entry becomes its sign
times one scale per tensor. The scale is the mean magnitude of the kept entries, the value that minimises
||t_kept - scale * sign(t_kept)|| (so compression never needs a validation set to pick it).

Stored compactly, per tensor `name`, in a safetensors file (no pickles):

    name.mask    uint8   the kept positions, one bit per entry (numel / 8 bytes)
    name.signs   uint8   one bit per kept entry, 1 = negative (k / 8 bytes)
    name.scale   float32 [1]
    name.shape   int64   the original shape

At 10 % density that is about 1.1 bits per entry against 32 (fp32) or 16 (bf16): 29x or 14.5x smaller.
`decompress` restores dense tensors that serve like any adapter's.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from worker.adapters.merge import trim_to_density

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


def ternarize(tensor: torch.Tensor, density: float) -> Ternary:
    kept = trim_to_density(tensor.float(), density).reshape(-1)
    mask = kept != 0
    values = kept[mask]
    scale = float(values.abs().mean()) if values.numel() else 0.0
    return Ternary(tuple(tensor.shape), pack_bits(mask), pack_bits(values < 0), scale)


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


def compress(tensors: Mapping[str, torch.Tensor], density: float) -> tuple[dict[str, Ternary], float]:
    """Every tensor compressed; and the compression ratio against the tensors as given (their dtype)."""
    compressed = {name: ternarize(tensor, density) for name, tensor in tensors.items()}
    original = sum(t.numel() * t.element_size() for t in tensors.values())
    stored = sum(t.nbytes for t in compressed.values())
    return compressed, original / max(1, stored)


def decompress(compressed: Mapping[str, Ternary], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {name: dequantize(ternary, dtype) for name, ternary in compressed.items()}


#: The compressed weights file of an adapter directory (beside its unchanged adapter_config.json).
COMPRESSED_WEIGHTS = "adapter_model.compeft.safetensors"
DENSE_WEIGHTS = "adapter_model.safetensors"


def adapter_files(listed: set[str]) -> set[str]:
    """The files that make an adapter, among the `listed` ones of its artifact: its config and its weights,
    dense or compressed (the dense file when both are there)."""
    weights = DENSE_WEIGHTS if DENSE_WEIGHTS in listed or COMPRESSED_WEIGHTS not in listed else COMPRESSED_WEIGHTS
    return {"adapter_config.json", weights}


def compress_adapter_dir(source: Path, target: Path, *, density: float) -> float:
    """Compress a peft adapter directory into `target` (created); returns the stored-size ratio of the
    weights file (dense safetensors bytes / compressed safetensors bytes)."""
    tensors = load_adapter_tensors(source)  # a compressed adapter is compressed again from its dense form
    compressed, _ = compress(tensors, density)
    target.mkdir(parents=True)
    save_file(to_safetensors(compressed), str(target / COMPRESSED_WEIGHTS),
              metadata={"format": "compeft", "density": repr(density)})
    config = json.loads((source / "adapter_config.json").read_text())
    config["ftaas_compression"] = {"method": "compeft", "density": density}
    (target / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    for extra in ("README.md",):
        if (source / extra).is_file():
            shutil.copyfile(source / extra, target / extra)
    dense = source / DENSE_WEIGHTS
    dense_bytes = dense.stat().st_size if dense.is_file() else sum(t.numel() * t.element_size()
                                                                     for t in tensors.values())
    return dense_bytes / (target / COMPRESSED_WEIGHTS).stat().st_size


def load_adapter_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """An adapter directory's tensors, dense: from adapter_model.safetensors, or decompressed from the
    compressed file when that is what the directory holds."""
    if (directory / DENSE_WEIGHTS).is_file():
        return load_file(str(directory / DENSE_WEIGHTS))
    if (directory / COMPRESSED_WEIGHTS).is_file():
        return decompress(from_safetensors(load_file(str(directory / COMPRESSED_WEIGHTS))))
    raise FileNotFoundError(f"no adapter weights in {directory}")
