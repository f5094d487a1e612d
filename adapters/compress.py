"""ComPEFT-style compression of adapter tensors: sparsify, then ternary-quantise, then pack into bits.

Each tensor t keeps its `density` share of largest-magnitude entries; each kept entry becomes its sign
times one scale per tensor. The scale is the mean magnitude of the kept entries, the value that minimises
||t_kept - scale * sign(t_kept)|| (so compression never needs a validation set to pick it).

Stored compactly in a safetensors file (no pickles) whose layout adapters.compeft defines, as
it defines how the serving engine reads it back. At 10 % density that is about 1.1 bits per entry against 32 (fp32) or 16 (bf16): 29x or 14.5x smaller.
`adapters.compeft.decompress` restores dense tensors that serve like any adapter's.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from adapters.compeft import Ternary, pack_bits, to_safetensors
from adapters.files import COMPRESSED_WEIGHTS, CONFIG, WEIGHTS, load_tensors
from adapters.merge import trim_to_density


def ternarize(tensor: torch.Tensor, density: float) -> Ternary:
    kept = trim_to_density(tensor.float(), density).reshape(-1)
    mask = kept != 0
    values = kept[mask]
    scale = float(values.abs().mean()) if values.numel() else 0.0
    return Ternary(tuple(tensor.shape), pack_bits(mask), pack_bits(values < 0), scale)


def compress(tensors: Mapping[str, torch.Tensor], density: float,
             progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, Ternary], float]:
    """Every tensor compressed; and the compression ratio against the tensors as given (their dtype).
    `progress(done, total)` after each tensor."""
    compressed = {}
    for done, (name, tensor) in enumerate(tensors.items(), start=1):
        compressed[name] = ternarize(tensor, density)
        if progress is not None:
            progress(done, len(tensors))
    original = sum(t.numel() * t.element_size() for t in tensors.values())
    stored = sum(t.nbytes for t in compressed.values())
    return compressed, original / max(1, stored)


def compress_adapter_dir(source: Path, target: Path, *, density: float,
                         progress: Callable[[int, int], None] | None = None) -> float:
    """Compress a peft adapter directory into `target` (created); returns the stored-size ratio of the
    weights file (dense safetensors bytes / compressed safetensors bytes)."""
    tensors = load_tensors(source)  # a compressed adapter is compressed again from its dense form
    compressed, _ = compress(tensors, density, progress)
    target.mkdir(parents=True)
    save_file(to_safetensors(compressed), str(target / COMPRESSED_WEIGHTS),
              metadata={"format": "compeft", "density": repr(density)})
    config = json.loads((source / CONFIG).read_text())
    config["ftaas_compression"] = {"method": "compeft", "density": density}
    (target / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    for extra in ("README.md",):
        if (source / extra).is_file():
            shutil.copyfile(source / extra, target / extra)
    dense = source / WEIGHTS
    dense_bytes = dense.stat().st_size if dense.is_file() else sum(t.numel() * t.element_size()
                                                                     for t in tensors.values())
    return dense_bytes / (target / COMPRESSED_WEIGHTS).stat().st_size
