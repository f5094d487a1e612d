"""Continuous batching: what a sequence produces does not depend on what else is running."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from contracts.errors import Draining, Overloaded
from serving.adapter_weights import read_adapter
from serving.engine import Engine, Event, FinishEvent, SamplingParams, Sequence, TokenEvent
from tests.serving.conftest import PEFT_KINDS, AdapterFactory, forward_for, peft_adapter

ADAPTER_KINDS: list[dict[str, Any]] = [
    {}, {"r": 4}, {"r": 16}, {"rslora": True}, {"dora": True}, {"targets": ["q_proj", "v_proj"]},
    {"targets": ["gate_proj", "up_proj", "down_proj"]}, {"rank_pattern": {"o_proj": 2}},
    {"targets": ["q_proj", "lm_head"]},  # the output layer's LoRA (the tinker SDK's train_unembed)
]


@dataclass
class Collector:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    finish: FinishEvent | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __call__(self, event: Event) -> None:
        if isinstance(event, TokenEvent):
            self.tokens.append(event.token_id)
            self.logprobs.append(event.logprob)
        else:
            self.finish = event
            self.done.set()


def _sequence(prompt: list[int], adapter: Any, *, max_new: int, temperature: float = 0.0, seed: int | None = None,
              stop: frozenset[int] = frozenset()) -> tuple[Sequence, Collector]:
    sink = Collector()
    params = SamplingParams(max_new_tokens=max_new, temperature=temperature, seed=seed, logprobs=0,
                            stop_token_ids=stop)
    return Sequence(prompt, params, sink, adapter=adapter), sink


@pytest.fixture
def engine_factory(base_model: Any):
    engines: list[Engine] = []

    def make(slots: int = 16, max_queue: int = 64, prefill_tokens: int = 2048) -> Engine:
        engine = Engine(forward_for(base_model, slots=slots), name="tiny", max_queue=max_queue,
                        prefill_tokens=prefill_tokens, max_rank=16)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


def _prompts(tokenizer: Any, count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    words = "the a cat dog river town was born lives in likes music book red blue who what when".split()
    return [tokenizer(" ".join(rng.choice(words) for _ in range(rng.randint(2, 40))))["input_ids"]
            for _ in range(count)]


def test_mixed_batch_greedy_outputs_equal_each_request_run_alone(engine_factory, tokenizer: Any, base_model: Any,
                                                                 make_adapter: AdapterFactory, tmp_path: Path) -> None:
    """LoRA-family adapters of different kinds and ranks, IA3, prompt- and prefix-tuning adapters and the bare
    base model, 32 concurrent greedy requests of mixed prompt and output lengths, joining while others
    decode: every output is token-identical to the same request alone."""
    engine = engine_factory(slots=16)  # fewer slots than requests: sequences queue, join and leave
    adapters = [None] + [read_adapter(make_adapter(100 + i, **kind), engine.forward, key=str(i), max_rank=16)
                         for i, kind in enumerate(ADAPTER_KINDS)]
    adapters += [read_adapter(peft_adapter(base_model, kind, tmp_path / kind, seed=i), engine.forward, key=kind,
                              max_rank=16) for i, kind in enumerate(PEFT_KINDS)]
    prompts = _prompts(tokenizer, 32, seed=3)
    rng = random.Random(4)
    plan = [(prompts[i], adapters[i % len(adapters)], rng.randint(3, 40)) for i in range(32)]

    alone = []
    for prompt, adapter, max_new in plan:
        sequence, sink = _sequence(prompt, adapter, max_new=max_new)
        engine.submit([sequence])
        assert sink.done.wait(60)
        alone.append(sink)

    together = []
    for index, (prompt, adapter, max_new) in enumerate(plan):
        sequence, sink = _sequence(prompt, adapter, max_new=max_new)
        engine.submit([sequence])
        together.append(sink)
        if index % 5 == 4:
            time.sleep(0.01)  # let a few steps run so that later requests join a running batch
    for sink in together:
        assert sink.done.wait(120)

    assert engine.steps > 0
    for index, (first, second) in enumerate(zip(alone, together, strict=True)):
        assert second.tokens == first.tokens, f"request {index} (adapter {index % len(adapters)}) differs"
        assert second.logprobs == first.logprobs, f"request {index}: log probabilities differ"
        assert second.finish == first.finish
    outputs = {tuple(s.tokens) for s in alone}
    assert len(outputs) > 16, "adapters should produce different outputs"


def test_seeded_sampling_repeats_alone_or_batched(engine_factory, tokenizer: Any,
                                                  make_adapter: AdapterFactory) -> None:
    engine = engine_factory()
    adapter = read_adapter(make_adapter(7), engine.forward, key="7", max_rank=16)
    prompt = tokenizer("the river town")["input_ids"]
    runs = []
    for crowd in (0, 6):
        others = [_sequence(p, adapter, max_new=20, temperature=1.0)[0] for p in _prompts(tokenizer, crowd, 9)]
        sequence, sink = _sequence(prompt, adapter, max_new=20, temperature=0.9, seed=1234)
        engine.submit([*others, sequence])
        assert sink.done.wait(60)
        runs.append(sink.tokens)
    assert runs[0] == runs[1]
    different, sink = _sequence(prompt, adapter, max_new=20, temperature=0.9, seed=99)
    engine.submit([different])
    assert sink.done.wait(60)
    assert sink.tokens != runs[0]


def test_a_cancelled_sequence_frees_its_slot_for_a_waiting_one(engine_factory, tokenizer: Any) -> None:
    engine = engine_factory(slots=1)
    prompt = tokenizer("the cat")["input_ids"]
    long, long_sink = _sequence(prompt, None, max_new=200)
    short, short_sink = _sequence(prompt, None, max_new=3)
    engine.submit([long, short])
    while len(long_sink.tokens) < 2:
        time.sleep(0.005)
    assert not short_sink.done.is_set() and engine.waiting == 1
    engine.cancel(long)
    assert short_sink.done.wait(10) and long_sink.done.wait(10)
    assert long_sink.finish is not None and long_sink.finish.reason == "cancelled"
    assert long_sink.finish.completion_tokens < 200
    assert short_sink.finish is not None and short_sink.finish.reason == "length"


def test_a_full_queue_is_refused_and_a_stop_token_ends_a_sequence(engine_factory, tokenizer: Any) -> None:
    engine = engine_factory(slots=1, max_queue=1)
    prompt = tokenizer("the cat")["input_ids"]
    sequences = [_sequence(prompt, None, max_new=100)[0] for _ in range(2)]
    engine.submit(sequences)
    with pytest.raises(Overloaded) as refused:
        engine.submit([_sequence(prompt, None, max_new=5)[0]])
    assert refused.value.retry_after >= 1
    for sequence in sequences:
        engine.cancel(sequence)

    probe, probe_sink = _sequence(prompt, None, max_new=5)
    engine.submit([probe])
    assert probe_sink.done.wait(10)
    stop_at = probe_sink.tokens[2]
    stopped, sink = _sequence(prompt, None, max_new=5, stop=frozenset({stop_at}))
    engine.submit([stopped])
    assert sink.done.wait(10)
    assert sink.tokens == probe_sink.tokens[:2] and sink.finish is not None
    assert (sink.finish.reason, sink.finish.completion_tokens) == ("stop", 2)


def test_deadlines_and_draining(engine_factory, tokenizer: Any) -> None:
    engine = engine_factory(slots=2)
    prompt = tokenizer("the cat")["input_ids"]
    late, late_sink = _sequence(prompt, None, max_new=100_000 // 1000)
    late.deadline = time.monotonic() - 1
    engine.submit([late])
    assert late_sink.done.wait(10) and late_sink.finish is not None and late_sink.finish.reason == "timeout"

    running, running_sink = _sequence(prompt, None, max_new=60)
    engine.submit([running])
    assert engine.drain(timeout=30)
    assert running_sink.finish is not None and running_sink.finish.reason == "length"
    with pytest.raises(Draining):
        engine.submit([_sequence(prompt, None, max_new=5)[0]])


def test_min_tokens_holds_back_the_stop_tokens_until_enough_were_generated(engine_factory, tokenizer: Any) -> None:
    """vLLM's `min_tokens`: the token a greedy completion would stop on first is made a stop token; alone it
    ends the completion at once, with `min_new_tokens` it cannot be chosen before that many tokens, and the
    completion is the greedy one with that token masked."""
    engine = engine_factory(slots=4)
    prompt = _prompts(tokenizer, 1, seed=11)[0]
    free, collected = _sequence(prompt, None, max_new=12)
    engine.submit([free])
    assert collected.done.wait(60)
    first = collected.tokens[0]

    stopped, at_once = _sequence(prompt, None, max_new=12, stop=frozenset({first}))
    held = Sequence(prompt, SamplingParams(max_new_tokens=12, temperature=0.0, stop_token_ids=frozenset({first}),
                                           min_new_tokens=5), (kept := Collector()))
    engine.submit([stopped, held])
    assert at_once.done.wait(60) and kept.done.wait(60)
    assert at_once.finish.reason == "stop" and at_once.finish.completion_tokens == 0
    assert len(kept.tokens) >= 5 and first not in kept.tokens[:5]
    assert kept.finish.reason in ("stop", "length")


def test_prompt_logprobs_are_the_models_own_and_a_kept_stop_token_is_reported(
        engine_factory, tokenizer: Any, base_model: Any, make_adapter: AdapterFactory) -> None:
    """A token-level client's asks (the training API's sampler): each prompt token's log probability given the
    ones before it, equal to peft's model on the same adapter (also with a cached prefix of the same prompt
    in the engine, which such a sequence does not use), and the stop token that ends a sample reported with its
    log probability instead of dropped."""
    import torch
    from peft import PeftModel

    engine = engine_factory(slots=4)
    directory = make_adapter(21)
    adapter = read_adapter(directory, engine.forward, key="21", max_rank=16)
    prompt = _prompts(tokenizer, 1, seed=5)[0]
    warm, warm_sink = _sequence(prompt, adapter, max_new=3)  # the prompt's prefix cached for this adapter
    engine.submit([warm])
    assert warm_sink.done.wait(60)

    sink = Collector()
    engine.submit([Sequence(prompt, SamplingParams(max_new_tokens=4, temperature=0.0, logprobs=0,
                                                   prompt_logprobs=True), sink, adapter=adapter)])
    assert sink.done.wait(60) and sink.finish is not None
    scored = sink.finish.prompt_logprobs
    assert scored is not None and len(scored) == len(prompt) and scored[0] is None
    reference_model = PeftModel.from_pretrained(base_model, directory)
    with torch.no_grad():
        logits = reference_model(input_ids=torch.tensor([prompt])).logits[0].float()
    reference_model.unload()
    expected = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(prompt[1:])[:, None])[:, 0]
    assert torch.allclose(torch.tensor(scored[1:]), expected, atol=1e-3), (scored[1:5], expected[:5])
    assert sink.tokens == warm_sink.tokens + [sink.tokens[3]]  # the same greedy tokens: generation unchanged

    stop_at = warm_sink.tokens[1]
    kept = Collector()
    engine.submit([Sequence(prompt, SamplingParams(max_new_tokens=5, temperature=0.0, logprobs=0,
                                                   stop_token_ids=frozenset({stop_at}), keep_stop_token=True),
                            kept, adapter=adapter)])
    assert kept.done.wait(60) and kept.finish is not None
    assert kept.tokens == warm_sink.tokens[:2] and kept.logprobs[1] == pytest.approx(warm_sink.logprobs[1])
    assert (kept.finish.reason, kept.finish.completion_tokens) == ("stop", 1)
