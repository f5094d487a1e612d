"""The engine's forward pass computes what the model and peft compute, for every served adapter type."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from contracts.errors import InvalidRequest
from serving.adapter_weights import compose, read_adapter
from serving.engine import Engine, SamplingParams, Sequence
from serving.model import build_step
from serving.slots import SlotAdapters
from tests.serving.conftest import PEFT_KINDS, AdapterFactory, forward_for, peft_adapter
from tests.serving.test_engine import Collector

PROMPT = "The cat was born in a town by the river and likes"


def engine_logits(forward: Any, ids: list[int], adapter: Any = None) -> torch.Tensor:
    """The logits at the prompt's last position, the prompt prefilled as the engine does (after the adapter's
    virtual prefix, where it has one)."""
    slots = SlotAdapters(forward, max_rank=16)
    slots.assign(3, adapter)
    past = 0 if adapter is None else adapter.virtual_tokens
    if past:
        forward.kv.reserve(3, past + len(ids))
        forward.kv[3][:, :, :, :past] = adapter.prefix
    with torch.inference_mode():
        logits = forward.forward(build_step(forward, [], [(3, ids, past)], slots))[0]
    forward.kv.release(3)
    return logits


def _peft_greedy(reference: Any, ids: list[int], new_tokens: int) -> list[int]:
    """peft's greedy continuation, one full forward pass per token (the forward training ran)."""
    tokens = list(ids)
    with torch.inference_mode():
        for _ in range(new_tokens):
            tokens.append(int(reference(torch.tensor([tokens])).logits[0, -1].argmax()))
    return tokens[len(ids):]


def _engine_greedy(forward: Any, ids: list[int], adapter: Any, new_tokens: int) -> list[int]:
    engine = Engine(forward, name="tiny", max_queue=4, prefill_tokens=2048, max_rank=16)
    try:
        sink = Collector()
        engine.submit([Sequence(ids, SamplingParams(max_new_tokens=new_tokens, temperature=0.0), sink,
                                adapter=adapter)])
        assert sink.done.wait(60)
        return sink.tokens
    finally:
        engine.stop()


@pytest.mark.parametrize("kind", PEFT_KINDS)
def test_ia3_prompt_and_prefix_adapters_compute_what_peft_computes(base_model: Any, tokenizer: Any, kind: str,
                                                                    tmp_path: Path) -> None:
    """Every other adapter type ftaas trains is served by the batched engine: the prompt's logits within
    2e-5 of peft's, and the engine's greedy continuation (decode steps at the positions after the virtual
    prefix) token-identical to peft's."""
    directory = peft_adapter(base_model, kind, tmp_path / kind, seed=13)
    forward = forward_for(base_model)
    adapter = read_adapter(directory, forward, key="k", max_rank=16)
    assert adapter.virtual_tokens == (6 if kind in ("prompt_tuning", "prefix_tuning") else 0)
    ids = tokenizer(PROMPT)["input_ids"]
    reference = PeftModel.from_pretrained(copy.deepcopy(base_model), str(directory)).eval()
    with torch.inference_mode():
        expected = reference(torch.tensor([ids])).logits[0, -1]
    ours = engine_logits(forward, ids, adapter)
    assert torch.allclose(ours, expected, atol=2e-5), (ours - expected).abs().max()
    assert not torch.allclose(ours, engine_logits(forward, ids), atol=1e-2), "the adapter should change the output"
    assert _engine_greedy(forward, ids, adapter, 12) == _peft_greedy(reference, ids, 12)


@pytest.mark.parametrize("options", [
    {}, {"rslora": True}, {"dora": True}, {"targets": ["q_proj", "v_proj"], "r": 4},
    {"rank_pattern": {"down_proj": 16}, "alpha_pattern": {"o_proj": 3.0}},
    {"targets": ["q_proj", "v_proj", "lm_head"]}, {"targets": ["lm_head"], "r": 4, "rslora": True},
], ids=["lora", "rslora", "dora", "qv-only", "rank-and-alpha-patterns", "with-output-layer", "output-layer-only"])
def test_adapter_logits_match_peft(base_model: Any, tokenizer: Any, make_adapter: AdapterFactory,
                                   options: dict[str, Any]) -> None:
    directory = make_adapter(11, **options)
    forward = forward_for(base_model)
    ids = tokenizer(PROMPT)["input_ids"]
    reference = PeftModel.from_pretrained(copy.deepcopy(base_model), str(directory)).eval()
    with torch.inference_mode():
        expected = reference(torch.tensor([ids])).logits[0, -1]
    ours = engine_logits(forward, ids, read_adapter(directory, forward, key="k", max_rank=16))
    assert torch.allclose(ours, expected, atol=2e-5), (ours - expected).abs().max()
    assert not torch.allclose(ours, engine_logits(forward, ids), atol=1e-2), "the adapter should change the output"


def test_base_logits_match_transformers(base_model: Any, tokenizer: Any) -> None:
    forward = forward_for(base_model)
    ids = tokenizer(PROMPT)["input_ids"]
    with torch.inference_mode():
        expected = base_model(torch.tensor([ids])).logits[0, -1]
    assert torch.allclose(engine_logits(forward, ids), expected, atol=2e-5)


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
    assert torch.allclose(engine_logits(forward, ids, composed), expected, atol=5e-5)


def test_unservable_adapters_are_refused_with_a_reason(base_model: Any, make_adapter: AdapterFactory,
                                                       tmp_path: Path) -> None:
    forward = forward_for(base_model)
    vera = tmp_path / "vera"
    vera.mkdir()
    (vera / "adapter_config.json").write_text(json.dumps({"peft_type": "VERA"}))
    with pytest.raises(InvalidRequest, match="VERA adapters cannot be served") as refused:
        read_adapter(vera, forward, key="x", max_rank=16)
    assert refused.value.code == "unsupported_adapter"

    # IA3 scaling one member of a fused group's shared input: no single product can compute it
    partial = peft_adapter(base_model, "ia3", tmp_path / "partial")
    config = json.loads((partial / "adapter_config.json").read_text())
    tensors = load_file(str(partial / "adapter_model.safetensors"))
    for name in [n for n in tensors if ".self_attn.k_proj." in n]:
        tensors[name] = torch.full((1, base_model.config.hidden_size), 1.5)  # k_proj scaled on its input
    save_file(tensors, str(partial / "adapter_model.safetensors"))
    (partial / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidRequest, match="not alike for every module of the fused qkv group") as fused:
        read_adapter(partial, forward, key="x", max_rank=16)
    assert fused.value.code == "unsupported_adapter"

    prefix = peft_adapter(base_model, "prefix_tuning", tmp_path / "prefix")
    config = json.loads((prefix / "adapter_config.json").read_text())
    (prefix / "adapter_config.json").write_text(json.dumps({**config, "num_layers": 3}))
    with pytest.raises(InvalidRequest, match="the base model needs") as wrong_base:
        read_adapter(prefix, forward, key="x", max_rank=16)
    assert wrong_base.value.code == "adapter_base_mismatch"
    with pytest.raises(InvalidRequest, match="only LoRA adapters can be composed"):
        ia3 = read_adapter(peft_adapter(base_model, "ia3", tmp_path / "ia3"), forward, key="i", max_rank=16)
        compose([(ia3, 0.5), (ia3, 0.5)], key="ii", max_rank=16)

    with pytest.raises(InvalidRequest, match="exceeds the served maximum 4") as too_high:
        read_adapter(make_adapter(5, r=8), forward, key="x", max_rank=4)
    assert too_high.value.code == "adapter_rank_too_high"

    with pytest.raises(InvalidRequest, match="magnitude rescaling is not additive"):
        dora = read_adapter(make_adapter(6, dora=True), forward, key="d", max_rank=16)
        compose([(dora, 0.5), (dora, 0.5)], key="dd", max_rank=16)
