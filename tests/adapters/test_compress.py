"""Compression: ternary quantisation by hand, bit packing, and the stored size of a rank-16 adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from adapters.compeft import (
    decompress,
    dequantize,
    from_safetensors,
    pack_bits,
    to_safetensors,
    unpack_bits,
)
from adapters.compress import compress, ternarize


def test_ternary_keeps_the_largest_entries_as_sign_times_their_mean_magnitude() -> None:
    tensor = torch.tensor([0.1, -0.5, 0.3, -0.05])
    ternary = ternarize(tensor, 0.5)
    assert ternary.scale == pytest.approx(0.4)  # mean of 0.5 and 0.3
    assert torch.allclose(dequantize(ternary), torch.tensor([0.0, -0.4, 0.4, 0.0]))


def test_bits_pack_and_unpack_for_any_length() -> None:
    for count in (1, 7, 8, 9, 123):
        bits = torch.rand(count, generator=torch.Generator().manual_seed(count)) > 0.5
        assert torch.equal(unpack_bits(pack_bits(bits), count), bits)
        assert pack_bits(bits).numel() == (count + 7) // 8


def test_a_rank_16_adapter_is_stored_at_least_8x_smaller_and_round_trips() -> None:
    generator = torch.Generator().manual_seed(0)
    # The demo model's attention and MLP shapes (hidden 128, intermediate 256), rank 16, 4 layers.
    tensors = {}
    for layer in range(4):
        for module, (out, fan_in) in {"q_proj": (128, 128), "v_proj": (64, 128), "down_proj": (128, 256)}.items():
            tensors[f"layers.{layer}.{module}.lora_A.weight"] = torch.randn(16, fan_in, generator=generator)
            tensors[f"layers.{layer}.{module}.lora_B.weight"] = torch.randn(out, 16, generator=generator)
    compressed, ratio = compress(tensors, density=0.1)
    assert ratio >= 8
    stored = to_safetensors(compressed)
    assert sum(t.numel() * t.element_size() for t in stored.values()) * 8 <= sum(
        t.numel() * t.element_size() for t in tensors.values())
    restored = decompress(from_safetensors(stored))
    for name, tensor in tensors.items():
        kept = restored[name] != 0
        assert kept.float().mean().item() == pytest.approx(0.1, abs=0.01)
        assert torch.equal(restored[name][kept].sign(), tensor[kept].sign())


def test_a_compressed_adapter_directory_is_8x_smaller_and_serves(start_serving: Any, make_adapter: Any,
                                                                 tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from adapters.compress import compress_adapter_dir
    from adapters.files import COMPRESSED_WEIGHTS, load_tensors
    from contracts.settings import DEMO_BASE_MODEL

    source = make_adapter(71, r=16)
    steps: list[tuple[int, int]] = []
    ratio = compress_adapter_dir(source, tmp_path / "compact", density=0.1, progress=lambda *step: steps.append(step))
    assert ratio >= 8
    tensors = len(load_tensors(source))
    assert steps == [(done, tensors) for done in range(1, tensors + 1)]  # one per tensor
    names = {p.name for p in (tmp_path / "compact").iterdir()}
    assert {"adapter_config.json", COMPRESSED_WEIGHTS} <= names and "adapter_model.safetensors" not in names

    # Served from the store through the adapter cache, decompressed at load: the same answers as the dense
    # adapter holding exactly the decompressed weights.
    dense = tmp_path / "dense-equivalent"
    dense.mkdir()
    save_file(load_tensors(tmp_path / "compact"), str(dense / "adapter_model.safetensors"))
    (dense / "adapter_config.json").write_bytes((source / "adapter_config.json").read_bytes())
    live = start_serving()
    compact_model, dense_model = live.register(tmp_path / "compact", "compact"), live.register(dense, "dense")
    client = live.client()
    messages = [{"role": "user", "content": "Who lives in the town by the river?"}]
    replies = [client.chat.completions.create(model=m, messages=messages, max_tokens=10, temperature=0)
               .choices[0].message.content for m in (compact_model, dense_model, DEMO_BASE_MODEL)]
    assert replies[0] == replies[1]
    assert replies[0] != replies[2]
