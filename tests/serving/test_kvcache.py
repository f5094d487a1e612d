"""The KV cache grows with what sequences hold, under a byte budget: a sequence that outgrows its first chunk
computes what transformers computes; finished sequences give their memory back for others to reuse; when
the budget is spent the newest sequence is preempted and later resumed, losing nothing."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from serving.engine import Engine, SamplingParams, Sequence
from serving.kvcache import KVBudgetExceeded, KVCache
from serving.model import LlamaForward, build_step
from tests.serving.test_engine import Collector


def _tokens(tokenizer: Any, count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    words = "the a cat dog river town was born lives in likes music book red blue who what when".split()
    ids: list[int] = []
    while len(ids) < count:
        ids += tokenizer(" ".join(rng.choice(words) for _ in range(50)))["input_ids"]
    return ids[:count]


def test_capacity_starts_at_one_chunk_doubles_and_is_charged_to_the_budget() -> None:
    cache = KVCache(layers=2, kv_heads=1, head_dim=4, dtype=torch.float32, device=torch.device("cpu"), slots=2,
                    max_context=1000, budget_bytes=1900 * 64, chunk=256)
    assert cache.position_bytes == 2 * 2 * 1 * 4 * 4
    cache.reserve(0, 10)
    assert cache.capacity(0) == 256 and cache.used_bytes == 256 * cache.position_bytes
    cache[0][:, :, :, :10] = 7.0
    cache.reserve(0, 257)
    assert cache.capacity(0) == 512 and bool((cache[0][:, :, :, :10] == 7.0).all())  # kept on growth
    cache.reserve(0, 900)
    assert cache.capacity(0) == 1000  # capped at the context
    cache.reserve(1, 500)
    with pytest.raises(KVBudgetExceeded):  # 1000 + 1000 > 1900 positions
        cache.reserve(1, 600)
    assert cache.capacity(1) == 512  # a refused growth changes nothing
    cache.release(0)
    cache.reserve(1, 600)
    assert cache.used_bytes == 1000 * cache.position_bytes
    cache.move(1, 0)
    assert cache.capacity(0) == 1000 and cache.capacity(1) == 0 and cache.used_bytes == 1000 * cache.position_bytes


def test_a_sequence_longer_than_one_chunk_computes_what_transformers_computes(base_model: Any,
                                                                               tokenizer: Any) -> None:
    """Prefill 250 positions (one 256-position chunk), then decode across the chunk's end into a grown cache:
    every step's logits are transformers' at that position."""
    ids = _tokens(tokenizer, 280, seed=1)
    with torch.inference_mode():
        expected = base_model(torch.tensor([ids])).logits[0].float()
    for tile_rows in (64, 1):
        forward = LlamaForward(base_model, max_slots=2, max_context=1024, tile_rows=tile_rows)
        with torch.inference_mode():
            prefill = forward.forward(build_step(forward, [], [(1, ids[:250])]))[0]
            assert forward.kv.capacity(1) == 256
            assert torch.allclose(prefill, expected[249], atol=2e-5)
            for position in range(250, 280):
                logits = forward.forward(build_step(forward, [(1, ids[position], position)], []))[0]
                assert torch.allclose(logits, expected[position], atol=2e-5), (position, tile_rows)
        assert forward.kv.capacity(1) == 512 and forward.kv.used_bytes == 512 * forward.kv.position_bytes


def _run(engine: Engine, prompts: list[list[int]], max_new: int) -> list[Collector]:
    sinks = []
    for prompt in prompts:
        sink = Collector()
        engine.submit([Sequence(prompt, SamplingParams(max_new_tokens=max_new, temperature=0.0), sink)])
        sinks.append(sink)
    assert engine.drain(300)
    return sinks


def _alone(base_model: Any, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    engine = Engine(LlamaForward(base_model, max_slots=1, max_context=1024, tile_rows=64), name="alone",
                    max_queue=64, prefill_tokens=4096, max_rank=8)
    try:
        return [s.tokens for s in _run(engine, prompts, max_new)]
    finally:
        engine.stop()


def test_finished_sequences_give_their_memory_back_for_others_to_reuse(base_model: Any, tokenizer: Any) -> None:
    """A budget of three chunks serves twelve sequences, at most three at a time, each exactly as it runs
    alone; afterwards nothing is held."""
    prompts = [_tokens(tokenizer, 20 + 9 * i, seed=10 + i) for i in range(12)]
    forward = LlamaForward(base_model, max_slots=8, max_context=1024, tile_rows=64,
                           kv_budget_bytes=3 * 256 * 4 * 2 * 2 * 32 * 4)  # layers x (k, v) x kv heads x dim x fp32
    engine = Engine(forward, name="reuse", max_queue=64, prefill_tokens=4096, max_rank=8)
    peak = [0]

    class Watch(Collector):
        def __call__(self, event: Any) -> None:
            peak[0] = max(peak[0], forward.kv.used_bytes)
            super().__call__(event)

    try:
        sinks = []
        for prompt in prompts:
            sink = Watch()
            engine.submit([Sequence(prompt, SamplingParams(max_new_tokens=12, temperature=0.0), sink)])
            sinks.append(sink)
        assert engine.drain(300)
    finally:
        engine.stop()
    assert all(s.finish is not None and s.finish.reason == "length" for s in sinks)
    assert [s.tokens for s in sinks] == _alone(base_model, prompts, 12)
    assert 0 < peak[0] <= forward.kv.budget_bytes
    assert forward.kv.used_bytes == 0 and all(held is None for held in forward.kv.slots)
    assert engine.preemptions == 0


def test_a_spent_budget_preempts_the_newest_sequence_which_resumes_losing_nothing(base_model: Any,
                                                                                  tokenizer: Any) -> None:
    """600 positions of budget; two sequences of 100-position prompts each hold a 256-position chunk until the
    first outgrows it: the second is preempted, waits, is prefilled again with what it had generated, and
    finishes with the tokens it produces alone."""
    prompts = [_tokens(tokenizer, 100, seed=20), _tokens(tokenizer, 110, seed=21)]
    forward = LlamaForward(base_model, max_slots=4, max_context=1024, tile_rows=64,
                           kv_budget_bytes=600 * 4 * 2 * 2 * 32 * 4)  # layers x (k, v) x kv heads x dim x fp32
    assert forward.kv.position_bytes == 4 * 2 * 2 * 32 * 4 and forward.max_context == 600
    engine = Engine(forward, name="preempt", max_queue=64, prefill_tokens=4096, max_rank=8)
    try:
        sinks = _run(engine, prompts, 200)
    finally:
        engine.stop()
    assert engine.preemptions >= 1
    assert all(s.finish is not None and s.finish.reason == "length" and len(s.tokens) == 200 for s in sinks)
    assert [s.tokens for s in sinks] == _alone(base_model, prompts, 200)
    assert forward.kv.used_bytes == 0


def test_a_prompt_computed_after_a_cached_prefix_gets_the_full_prefills_logits(base_model: Any,
                                                                                tokenizer: Any) -> None:
    ids = _tokens(tokenizer, 150, seed=30)
    forward = LlamaForward(base_model, max_slots=2, max_context=1024, tile_rows=1)
    with torch.inference_mode():
        full = forward.forward(build_step(forward, [], [(0, ids)]))[0]
        forward.kv.reserve(1, len(ids))
        forward.kv[1][:, :, :, :128] = forward.kv[0][:, :, :, :128]
        rest = forward.forward(build_step(forward, [], [(1, ids[128:], 128)]))[0]
        assert torch.allclose(rest, full, atol=2e-5), (rest - full).abs().max()
        assert torch.allclose(forward.kv[1][:, :, :, :150], forward.kv[0][:, :, :, :150], atol=2e-5)
        # and decoding on from either continues the same
        steps = [forward.forward(build_step(forward, [(slot, 5, 150)], []))[0] for slot in (0, 1)]
    assert torch.allclose(steps[0], steps[1], atol=2e-5)


def test_prompts_sharing_a_prefix_compute_it_once_per_adapter(base_model: Any, tokenizer: Any,
                                                              make_adapter: Any) -> None:
    """Six prompts share a 150-token system prompt: the first computes it, the others copy its two whole
    64-position blocks, and every completion is what it is without the cache. An adapter's prompts never
    reuse the base model's keys and values."""
    from serving.adapter_weights import read_adapter

    shared = _tokens(tokenizer, 150, seed=40)
    prompts = [shared + _tokens(tokenizer, 10 + i, seed=41 + i) for i in range(6)]

    def run(prefix_cache_bytes: int, adapter_for: Any) -> tuple[list[Collector], Engine]:
        forward = LlamaForward(base_model, max_slots=4, max_context=1024, tile_rows=1)
        engine = Engine(forward, name="prefix", max_queue=64, prefill_tokens=4096, max_rank=16,
                        prefix_cache_bytes=prefix_cache_bytes)
        adapter = read_adapter(make_adapter(3), forward, key="adapter-3", max_rank=16)
        sinks = []
        try:
            for index, prompt in enumerate(prompts):  # one after the other: each may reuse the ones before
                sink = Collector()
                engine.submit([Sequence(prompt, SamplingParams(max_new_tokens=8, temperature=0.0, logprobs=0), sink,
                                        adapter=adapter if adapter_for(index) else None)])
                assert sink.done.wait(60)
                sinks.append(sink)
        finally:
            engine.stop()
        return sinks, engine

    def with_adapter(index: int) -> bool:
        return index == 5

    cached, engine = run(64 * 1024 * 1024, with_adapter)
    uncached, _ = run(0, with_adapter)
    assert engine.prefixes.hits == 4 and engine.prefixes.positions_saved == 4 * 128  # not the adapter's prompt
    for ours, reference in zip(cached, uncached, strict=True):
        assert ours.tokens == reference.tokens
        assert ours.logprobs == pytest.approx(reference.logprobs, abs=1e-4)


def test_the_prefix_cache_evicts_the_least_recently_used_within_its_budget() -> None:
    from serving.kvcache import PrefixCache

    position_bytes = 2 * 2 * 1 * 4 * 4
    prefixes = PrefixCache(position_bytes=position_bytes, budget_bytes=256 * position_bytes, block=64)
    tensor = torch.zeros(2, 2, 1, 200, 4)
    first, second = list(range(1000, 1200)), list(range(2000, 2200))
    prefixes.store(None, first[:130], tensor)  # two blocks: 128 positions
    prefixes.store("adapter", first[:130], tensor)  # another adapter: its own entry
    assert prefixes.used_bytes == 256 * position_bytes
    assert prefixes.lookup(None, first[:70] + [1, 2, 3])[0] == 64  # one block shared
    prefixes.store(None, second[:70], tensor)  # over budget: the least recently used ("adapter") goes
    assert prefixes.lookup("adapter", first)[0] == 0
    assert prefixes.lookup(None, first)[0] == 128 and prefixes.lookup(None, second)[0] == 64
    assert prefixes.lookup(None, first[:64])[0] == 0  # at least one position is always computed
    assert prefixes.used_bytes == 192 * position_bytes


def test_batch_invariant_serving_never_uses_the_prefix_cache(base_model: Any) -> None:
    forward = LlamaForward(base_model, max_slots=2, max_context=256, tile_rows=64)
    engine = Engine(forward, name="invariant", max_queue=4, prefill_tokens=4096, max_rank=8,
                    prefix_cache_bytes=1 << 30)
    try:
        assert engine.prefixes.budget_bytes == 0
    finally:
        engine.stop()
