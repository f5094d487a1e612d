"""Whole-adapter merges on the demo model: what PEFT loads from the written adapter is the merge that was
asked for, and ftaas can serve it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel

from adapters.lora_files import merge_adapters, read_lora, write_lora
from adapters.merge import combine
from contracts.errors import InvalidRequest
from contracts.settings import DEMO_BASE_MODEL
from serving.adapter_weights import read_adapter
from tests.serving.conftest import forward_for


def peft_deltas(loader: Any, directory: Path) -> dict[str, torch.Tensor]:
    """Module path -> the weight update PEFT itself computes for the adapter in `directory`."""
    model = PeftModel.from_pretrained(loader.load_model(DEMO_BASE_MODEL), str(directory))
    deltas = {}
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            deltas[name] = module.get_delta_weight("default").detach().float()
    return deltas


def test_a_linear_merge_of_adapters_of_different_ranks_is_exact(loader: Any, make_adapter: Any,
                                                                 tmp_path: Path, base_model: Any) -> None:
    first, second = make_adapter(21, r=4), make_adapter(22, r=8, targets=["q_proj", "v_proj"])
    steps: list[tuple[int, int]] = []
    merged = merge_adapters([read_lora(first), read_lora(second)], [0.6, 0.4], method="linear",
                            progress=lambda *step: steps.append(step))
    assert steps == [(done, len(merged.modules)) for done in range(1, len(merged.modules) + 1)]  # one per module
    write_lora(tmp_path / "soup", merged.modules, template=json.loads((first / "adapter_config.json").read_text()))
    assert merged.max_error == 0.0
    expected_first, expected_second = peft_deltas(loader, first), peft_deltas(loader, second)
    got = peft_deltas(loader, tmp_path / "soup")
    assert set(got) == set(expected_first)  # every module either parent targets
    for name, delta in got.items():
        want = 0.6 * expected_first[name] + 0.4 * expected_second.get(name, torch.zeros_like(delta))
        assert torch.allclose(delta, want, atol=1e-5), name
    served = read_adapter(tmp_path / "soup", forward_for(base_model), key="soup", max_rank=32)
    assert served.layers[0]["qkv"].rank >= 12  # q: 4 + 8 concatenated (exact), served as written


def test_ties_and_lines_merges_are_the_factorised_merges_of_the_task_vectors(loader: Any, make_adapter: Any,
                                                                             tmp_path: Path) -> None:
    parents = [make_adapter(31, r=8), make_adapter(32, r=8)]
    adapters = [read_lora(p) for p in parents]
    merged = merge_adapters(adapters, [1.0, 1.0], method="ties", density=0.4, rank=8)
    write_lora(tmp_path / "ties", merged.modules, template=adapters[0].config)
    got = peft_deltas(loader, tmp_path / "ties")
    deltas = [peft_deltas(loader, p) for p in parents]
    for name, delta in got.items():
        want = combine([d[name] for d in deltas], [1.0, 1.0], method="ties", density=0.4)
        residual = torch.linalg.matrix_norm(delta - want) / torch.linalg.matrix_norm(want)
        module = next(m for m in merged.modules if m.endswith(name.removeprefix("base_model.model.")))
        assert residual.item() == pytest.approx(merged.truncation_error[module], abs=1e-4)
    assert 0 < merged.max_error < 1  # a rank-8 factorisation of a TIES merge is not exact, and says so

    lines = merge_adapters(adapters[:1], [1.0], method="linear", lines=(0.25, 0.75), num_layers=4)
    write_lora(tmp_path / "lines", lines.modules, template=adapters[0].config)
    scaled = peft_deltas(loader, tmp_path / "lines")
    for name, delta in scaled.items():
        layer = int(name.split("layers.")[1].split(".")[0])
        assert torch.allclose(delta, deltas[0][name] * (0.25 + 0.25 * layer), atol=1e-5), name


def test_dora_adapters_are_refused(make_adapter: Any) -> None:
    with pytest.raises(InvalidRequest, match="DoRA"):
        read_lora(make_adapter(41, dora=True))
