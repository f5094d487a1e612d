"""Sampling from a model while it trains: ftaas's engine over the trainer's own base weights, driven from the
trainer's thread, computing the adapter being trained from its live weights.

Reinforcement fine-tuning samples from the policy (the base model with the adapter as it stands) between
optimizer steps. `PolicySampler` builds the engine's forward pass on the model the trainer holds: no second
model is loaded; the forward reads the base weights in place, except that the q/k/v and gate/up projections
are concatenated once into fused matrices (the engine's layout; a copy of those frozen weights). Where the
trainer computes in bfloat16 (autocast on a CPU or GPU with native bfloat16), the sampler computes in it too,
from one bfloat16 copy of the frozen base (half the size of the float32 fused copies it replaces; measured
2x faster sampling, docs/benchmarks.md). After each
optimizer step `refresh` converts the adapter's current LoRA factors for the engine (a few MB, exact:
serving.lora, the conversion tests/serving/test_model.py checks against peft). Sampling runs the engine's
continuous batching (one forward pass per token for every sequence at once, KV caches per sequence) in the
calling thread (`Engine.run_until_idle`), so the trainer's and the engine's work share one thread and one
OpenMP team.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from collections.abc import Sequence as Sequences
from dataclasses import dataclass, field
from typing import Any

import torch

from serving.adapter_weights import AdapterWeights
from serving.engine import Engine, FinishEvent, SamplingParams, Sequence, TokenEvent
from serving.lora import read_lora
from serving.model import LlamaForward
from serving.service import stop_token_ids

#: The policy's prompt-prefix cache: granularity in positions, and the most it holds.
PREFIX_BLOCK = 16
PREFIX_CACHE_BYTES = 256 << 20


@dataclass
class Completion:
    """One sample: the tokens generated (ending with the stop token when the model stopped), why it ended
    (stop | length | error), and the log probability of each token under the sampling distribution."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = ""
    stop_token: int | None = None


class PolicySampler:
    """Samples completions of token prompts from `model` (a peft model whose base is a Llama-family decoder
    the engine serves), with or without its adapter."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int, max_context: int, max_rank: int = 64,
                 prefill_tokens: int = 4096, dtype: torch.dtype | None = None) -> None:
        """`dtype`: compute samples in this precision where it is not the weights' own (bfloat16 where the
        trainer's autocast computes in it: the engine then holds a bfloat16 copy of the base weights, made
        once, instead of float32 fused copies; the trainer's own weights stay as they are). A QLoRA model's
        4-bit base is dequantized once into such a copy (in `dtype`, float32 without one): the engine has
        no 4-bit kernel, and these are the very weights the trainer's 4-bit layers compute with."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.tokenizer = tokenizer
        self.stops = stop_token_ids(tokenizer, base)
        self.max_rank = max_rank
        source = base
        if quantized_linears(base):
            source = dequantized(base, dtype or torch.float32)
        elif dtype is not None and any(p.dtype != dtype for p in base.parameters() if p.is_floating_point()):
            # (the trainer may hold some weights in `dtype` already, its frozen linears, and not others)
            source = copy.deepcopy(base).to(dtype)
        self.forward = LlamaForward(source, max_slots=max_batch, max_context=max_context, tile_rows=1)
        del source  # the forward keeps the tensors it computes with
        # Samples of one prompt share its prefill: the first sample's prompt positions are kept (whole blocks of
        # PREFIX_BLOCK positions, keyed by the adapter's version) and copied into its siblings' caches.
        prefix_bytes = min(PREFIX_CACHE_BYTES, self.forward.kv.position_bytes * max_context * max_batch)
        self.engine = Engine(self.forward, name="policy", max_queue=1 << 20, prefill_tokens=prefill_tokens,
                             max_rank=max_rank, prefix_cache_bytes=prefix_bytes, prefix_block=PREFIX_BLOCK,
                             threaded=False)
        self.engine.slot_adapters.shared_products = True
        self.adapter: AdapterWeights | None = None
        self._version = 0

    def refresh(self, model: Any, adapter_name: str = "default") -> None:
        """Take the adapter's current weights (call after every optimizer step)."""
        from peft import get_peft_model_state_dict

        config = model.peft_config[adapter_name]
        settings = {"r": config.r, "lora_alpha": config.lora_alpha, "use_rslora": config.use_rslora,
                    "alpha_pattern": dict(config.alpha_pattern or {})}
        with torch.no_grad():
            tensors = {name: tensor.detach() for name, tensor in
                       get_peft_model_state_dict(model, adapter_name=adapter_name).items()}
        self._version += 1
        self.adapter = read_lora(settings, tensors, self.forward, key=f"policy-{self._version}",
                                 max_rank=max(self.max_rank, config.r))

    def sample(self, prompts: Sequences[list[int]], *, samples: int, max_new_tokens: int, temperature: float,
               seed: int, use_adapter: bool = True,
               on_prompt_done: Callable[[int, list[Completion]], None] | None = None) -> list[list[Completion]]:
        """`samples` completions of each prompt (seeded: the same call gives the same tokens), in order.
        `on_prompt_done(index, completions)` is called (in this thread, while the engine goes on with the
        rest) as soon as every sample of prompt `index` has ended: its grading can start then."""
        budget = self.forward.max_context
        results: list[list[Completion]] = []
        sequences: list[Sequence] = []
        for index, prompt in enumerate(prompts):
            row: list[Completion] = []
            pending = [samples]
            for sample in range(samples):
                completion = Completion()
                params = SamplingParams(max_new_tokens=max(1, min(max_new_tokens, budget - len(prompt) - 1)),
                                        temperature=temperature, seed=(seed * 1_000_003 + index * 1009 + sample) % (1 << 63),
                                        logprobs=0, stop_token_ids=self.stops)
                cell: list[Sequence] = []
                sequence = Sequence(list(prompt), params,
                                    _collector(completion, cell, row, pending, index, on_prompt_done),
                                    adapter=self.adapter if use_adapter else None)
                cell.append(sequence)
                sequences.append(sequence)
                row.append(completion)
            results.append(row)
        if samples > 1:
            # Each prompt's first sample joins first; once all of them have been prefilled (their prompt
            # prefixes cached), the siblings join and compute only the positions after the cached blocks.
            self.engine.submit(sequences[::samples])
            while self.engine.waiting and self.engine.run_step():
                pass
            self.engine.submit([s for i, s in enumerate(sequences) if i % samples])
        else:
            self.engine.submit(sequences)
        self.engine.run_until_idle()
        return results

    def close(self) -> None:
        self.engine.stop()


def quantized_linears(model: Any) -> list[str]:
    """Names of the modules whose weights bitsandbytes holds in 4 bits (QLoRA's base)."""
    return [name for name, module in model.named_modules()
            if type(module).__module__.startswith("bitsandbytes")
            and type(getattr(module, "weight", None)).__name__ == "Params4bit"]


def dequantized(model: Any, dtype: torch.dtype) -> Any:
    """A copy of `model` whose 4-bit linear layers (peft-wrapped or not) are plain `torch.nn.Linear`s holding
    their dequantized weights, everything in `dtype`."""
    import bitsandbytes.functional as bnb_functional

    copied = copy.deepcopy(model)
    for name in quantized_linears(copied):
        module = copied.get_submodule(name)
        weight = module.weight
        dense = bnb_functional.dequantize_4bit(weight.data, weight.quant_state).to(dtype)
        bias = getattr(module, "bias", None)
        linear = torch.nn.Linear(dense.shape[1], dense.shape[0], bias=bias is not None, dtype=dtype,
                                 device=dense.device)
        with torch.no_grad():
            linear.weight.copy_(dense)
            if bias is not None:
                linear.bias.copy_(bias.detach().to(dtype))
        # Under peft the 4-bit layer is a LoRA layer's `base_layer`: the LoRA layer goes (the engine computes
        # the adapter from its own copy of the factors, `refresh`).
        owner = name.removesuffix(".base_layer")
        parent_name, _, attribute = owner.rpartition(".")
        setattr(copied.get_submodule(parent_name), attribute, linear)
    # transformers refuses `.to(dtype)` on a model it loaded quantized; none of this copy is quantized now
    return torch.nn.Module.to(copied, dtype)


def _collector(completion: Completion, cell: list[Sequence], row: list[Completion], pending: list[int], index: int,
               on_prompt_done: Callable[[int, list[Completion]], None] | None) -> Any:
    """The engine's sink for one sample: its tokens, then at its end the stop token (the engine's finish
    event comes after the sequence holds it) and, once its prompt's samples have all ended, the callback."""
    def collect(event: TokenEvent | FinishEvent) -> None:
        if isinstance(event, TokenEvent):
            completion.token_ids.append(event.token_id)
            completion.logprobs.append(float(event.logprob) if event.logprob is not None else 0.0)
            return
        completion.finish_reason = event.reason
        generated = cell[0].generated
        if event.reason == "stop" and generated:
            completion.stop_token = generated[-1]
            completion.token_ids.append(generated[-1])
        pending[0] -= 1
        if pending[0] == 0 and on_prompt_done is not None:
            on_prompt_done(index, row)
    return collect
