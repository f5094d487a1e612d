"""Every model family the serving engine accepts, proven against transformers.

For each family a small random model is built from that family's transformers config (with the features that
change the computation: Llama 3's `rope_scaling`, Qwen2's q/k/v biases, Qwen3's per-head q/k norms, Phi-3's
fused qkv and gate/up projections (which adapters target by those names) and partial rotary embeddings,
Gemma 3's scaled embeddings, (1 + w) norms, GeLU gate, query scale and separate local/global RoPE tables,
tied and untied embeddings, sliding windows shorter than the sequence). The engine's logits for a prompt equal the
model's within float32 tolerance, and its greedy continuation (prefill, then one decode step per token through
the slot KV cache) is token-identical to `generate`, with no adapter and with a random LoRA adapter made by
peft. A family the engine cannot compute is refused with a clear 400 error naming it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from contracts.errors import InvalidRequest
from serving.adapter_weights import read_adapter
from serving.model import LlamaForward, build_step
from serving.slots import SlotAdapters
from tests.serving.conftest import PEFT_KINDS, peft_adapter

SMALL = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
PROMPT_LENGTH, NEW_TOKENS, SLOT = 20, 24, 2


def _config(family: str) -> Any:
    import transformers

    if family == "llama3-untied":
        return transformers.LlamaConfig(**SMALL, tie_word_embeddings=False, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32})
    if family == "llama-tied":
        return transformers.LlamaConfig(**SMALL, tie_word_embeddings=True)
    if family == "mistral-sliding":
        return transformers.MistralConfig(**SMALL, sliding_window=16, tie_word_embeddings=False)
    if family == "qwen2-biases-sliding":
        return transformers.Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=16, max_window_layers=1,
                                        tie_word_embeddings=True)
    if family == "qwen3-qk-norm":
        return transformers.Qwen3Config(**SMALL, head_dim=16, tie_word_embeddings=True)
    if family == "phi3-fused-sliding":
        return transformers.Phi3Config(**SMALL, pad_token_id=0, bos_token_id=1, eos_token_id=2, sliding_window=16,
                                       tie_word_embeddings=False)
    if family == "phi3-partial-rotary":
        return transformers.Phi3Config(**SMALL, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                        "partial_rotary_factor": 0.5})
    if family == "gemma3-local-global":
        # Local (sliding, base 10k) and global (linear-scaled, base 1M) layers with RoPE tables of their own,
        # a query scale that is not head_dim's, GeLU gate, (1 + w) norms around both sublayers.
        return transformers.Gemma3TextConfig(
            **SMALL, head_dim=16, query_pre_attn_scalar=24, sliding_window=16,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1_000_000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
            tie_word_embeddings=True)
    raise ValueError(family)


FAMILIES = ["llama3-untied", "llama-tied", "mistral-sliding", "qwen2-biases-sliding", "qwen3-qk-norm",
            "phi3-fused-sliding", "phi3-partial-rotary", "gemma3-local-global"]


def _model(family: str) -> Any:
    from transformers import AutoModelForCausalLM

    state = torch.random.get_rng_state()
    torch.manual_seed(sum(map(ord, family)))
    try:
        model = AutoModelForCausalLM.from_config(_config(family), dtype=torch.float32)
        with torch.no_grad():  # random norms and biases, so that a skipped one would show
            for name, parameter in model.named_parameters():
                if "norm" in name or name.endswith(".bias"):
                    parameter.add_(torch.randn_like(parameter) * 0.2)
    finally:
        torch.random.set_rng_state(state)
    model.config._attn_implementation = "eager"
    return model.eval()


def _adapter(model: Any, directory: Path) -> Path:
    state = torch.random.get_rng_state()
    torch.manual_seed(7)
    try:
        peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                                      init_lora_weights=False))
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_B" in name:
                    parameter.mul_(4.0)
        peft_model.save_pretrained(directory)
    finally:
        torch.random.set_rng_state(state)
    return directory


def _engine_greedy(forward: LlamaForward, prompt: list[int], adapter: Any) -> tuple[torch.Tensor, list[int]]:
    """The engine's logits for the prompt's last token, and its greedy continuation (after the adapter's
    virtual prefix, where it has one, as the engine places it)."""
    slots = SlotAdapters(forward, max_rank=16)
    slots.assign(SLOT, adapter)
    past = 0 if adapter is None else adapter.virtual_tokens
    if past:
        forward.kv.reserve(SLOT, past + len(prompt))
        forward.kv[SLOT][:, :, :, :past] = adapter.prefix
    with torch.inference_mode():
        logits = forward.forward(build_step(forward, [], [(SLOT, prompt, past)], slots))[0]
        tokens = [int(logits.argmax())]
        for position in range(past + len(prompt), past + len(prompt) + NEW_TOKENS - 1):
            step = forward.forward(build_step(forward, [(SLOT, tokens[-1], position)], [], slots))[0]
            tokens.append(int(step.argmax()))
    return logits, tokens


def _reference(model: Any, prompt: list[int]) -> tuple[torch.Tensor, list[int]]:
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        logits = model(ids).logits[0, -1]
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
                             min_new_tokens=NEW_TOKENS, pad_token_id=0, eos_token_id=None)
    return logits, out[0, len(prompt):].tolist()


def _forward_greedy(model: Any, prompt: list[int]) -> tuple[torch.Tensor, list[int]]:
    """Greedy decoding by full forward passes (the forward peft trains prompt-learning adapters with; its
    `generate` places their positions its own way)."""
    tokens = list(prompt)
    with torch.inference_mode():
        logits = model(torch.tensor([tokens])).logits[0, -1]
        tokens.append(int(logits.argmax()))
        for _ in range(NEW_TOKENS - 1):
            tokens.append(int(model(torch.tensor([tokens])).logits[0, -1].argmax()))
    return logits, tokens[len(prompt):]


@pytest.mark.parametrize("kind", ["base", "lora", *PEFT_KINDS])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_engine_computes_what_transformers_computes(family: str, kind: str, tmp_path: Path) -> None:
    """Each family's base model, and the model with each adapter type ftaas trains, against transformers and
    peft: the prompt's logits, and 24 greedy tokens."""
    model = _model(family)
    prompt = torch.randint(3, SMALL["vocab_size"], (PROMPT_LENGTH,), generator=torch.Generator().manual_seed(5)).tolist()
    forward = LlamaForward(model, max_slots=4, max_context=SMALL["max_position_embeddings"], tile_rows=16)
    adapter = None
    reference_model = model
    if kind != "base":
        directory = _adapter(model, tmp_path / "adapter") if kind == "lora" else \
            peft_adapter(model, kind, tmp_path / kind, seed=9)
        adapter = read_adapter(directory, forward, key="a", max_rank=16)
        reference_model = PeftModel.from_pretrained(copy.deepcopy(model), str(directory)).eval()
    reference = _reference if kind in ("base", "lora") else _forward_greedy
    expected_logits, expected_tokens = reference(reference_model, prompt)
    logits, tokens = _engine_greedy(forward, prompt, adapter)
    assert torch.allclose(logits, expected_logits, atol=1e-4, rtol=1e-4), (logits - expected_logits).abs().max()
    assert tokens == expected_tokens


def test_the_sliding_window_changes_the_result_where_it_binds() -> None:
    """The windowed families above would pass with full attention only if the window never bound."""
    model = _model("mistral-sliding")
    prompt = torch.randint(3, 256, (PROMPT_LENGTH,), generator=torch.Generator().manual_seed(5)).tolist()
    windowed = LlamaForward(model, max_slots=4, max_context=256, tile_rows=16)
    assert [layer.window for layer in windowed.layers] == [16, 16, 16]
    full = LlamaForward(model, max_slots=4, max_context=16, tile_rows=16)  # a window that cannot bind is off
    assert [layer.window for layer in full.layers] == [None, None, None]
    qwen2 = LlamaForward(_model("qwen2-biases-sliding"), max_slots=4, max_context=256, tile_rows=16)
    assert [layer.window for layer in qwen2.layers] == [None, 16, 16]  # max_window_layers=1: the first is full
    model.config.sliding_window = None
    unwindowed, _ = _reference(model, prompt)
    model.config.sliding_window = 16
    windowed_logits, _ = _engine_greedy(windowed, prompt, None)
    assert not torch.allclose(windowed_logits, unwindowed, atol=1e-3)


@pytest.mark.parametrize("family", ["gemma2", "gpt2"])
def test_a_family_the_engine_cannot_compute_is_refused_with_a_clear_error(family: str) -> None:
    import transformers

    configs = {
        "gemma2": lambda: transformers.Gemma2Config(**{**SMALL, "head_dim": 16}),
        "gpt2": lambda: transformers.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=64),
    }
    model = transformers.AutoModelForCausalLM.from_config(configs[family]())
    with pytest.raises(InvalidRequest) as refused:
        LlamaForward(model, max_slots=2, max_context=64, tile_rows=16)
    assert refused.value.code == "unsupported_model" and refused.value.param == "model"
    assert family in str(refused.value)
