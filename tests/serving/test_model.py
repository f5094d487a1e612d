"""The engine's forward pass computes what the model and peft compute, for every served adapter type."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel

from contracts.errors import InvalidRequest
from serving.lora import SlotLora, compose, read_adapter
from serving.model import build_step
from tests.serving.conftest import AdapterFactory, forward_for

PROMPT = "The cat was born in a town by the river and likes"


def _logits(forward: Any, ids: list[int], adapter: Any = None) -> torch.Tensor:
    lora = SlotLora(forward, max_rank=16)
    lora.assign(3, adapter)
    with torch.inference_mode():
        return forward.forward(build_step(forward, [], [(3, ids)], lora))[0]


@pytest.mark.parametrize("options", [
    {}, {"rslora": True}, {"dora": True}, {"targets": ["q_proj", "v_proj"], "r": 4},
    {"rank_pattern": {"down_proj": 16}, "alpha_pattern": {"o_proj": 3.0}},
], ids=["lora", "rslora", "dora", "qv-only", "rank-and-alpha-patterns"])
def test_adapter_logits_match_peft(base_model: Any, tokenizer: Any, make_adapter: AdapterFactory,
                                   options: dict[str, Any]) -> None:
    directory = make_adapter(11, **options)
    forward = forward_for(base_model)
    ids = tokenizer(PROMPT)["input_ids"]
    reference = PeftModel.from_pretrained(copy.deepcopy(base_model), str(directory)).eval()
    with torch.inference_mode():
        expected = reference(torch.tensor([ids])).logits[0, -1]
    ours = _logits(forward, ids, read_adapter(directory, forward, key="k", max_rank=16))
    assert torch.allclose(ours, expected, atol=2e-5), (ours - expected).abs().max()
    assert not torch.allclose(ours, _logits(forward, ids), atol=1e-2), "the adapter should change the output"


def test_base_logits_match_transformers(base_model: Any, tokenizer: Any) -> None:
    forward = forward_for(base_model)
    ids = tokenizer(PROMPT)["input_ids"]
    with torch.inference_mode():
        expected = base_model(torch.tensor([ids])).logits[0, -1]
    assert torch.allclose(_logits(forward, ids), expected, atol=2e-5)


def test_a_composition_is_the_weighted_sum_of_the_adapters_deltas(base_model: Any, tokenizer: Any,
                                                                   make_adapter: AdapterFactory) -> None:
    first, second = make_adapter(21), make_adapter(22, r=4, targets=["q_proj", "down_proj"])
    forward = forward_for(base_model)
    a = read_adapter(first, forward, key="a", max_rank=16)
    b = read_adapter(second, forward, key="b", max_rank=16)
    composed = compose([(a, 0.7), (b, -0.4)], key="ab", max_rank=16)
    # The reference: the same weighted deltas folded into a copy of the dense weights.
    merged = copy.deepcopy(base_model)
    for directory, weight in ((first, 0.7), (second, -0.4)):
        peft = PeftModel.from_pretrained(copy.deepcopy(base_model), str(directory))
        dense = peft.merge_and_unload().state_dict()
        for name, tensor in merged.state_dict().items():
            tensor += weight * (dense[name] - base_model.state_dict()[name])
    ids = tokenizer(PROMPT)["input_ids"]
    with torch.inference_mode():
        expected = merged(torch.tensor([ids])).logits[0, -1]
    assert torch.allclose(_logits(forward, ids, composed), expected, atol=5e-5)


def test_unservable_adapters_are_refused_with_a_reason(base_model: Any, make_adapter: AdapterFactory,
                                                       tmp_path: Path) -> None:
    forward = forward_for(base_model)
    ia3 = tmp_path / "ia3"
    ia3.mkdir()
    (ia3 / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(InvalidRequest, match="IA3 adapters cannot be batch-served") as refused:
        read_adapter(ia3, forward, key="x", max_rank=16)
    assert refused.value.code == "unsupported_adapter"

    with pytest.raises(InvalidRequest, match="exceeds the served maximum 4") as too_high:
        read_adapter(make_adapter(5, r=8), forward, key="x", max_rank=4)
    assert too_high.value.code == "adapter_rank_too_high"

    with pytest.raises(InvalidRequest, match="magnitude rescaling is not additive"):
        dora = read_adapter(make_adapter(6, dora=True), forward, key="d", max_rank=16)
        compose([(dora, 0.5), (dora, 0.5)], key="dd", max_rank=16)
