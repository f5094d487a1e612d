"""The OpenAI wire contract of serving, through the official SDK against a live server."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from contracts.settings import DEMO_BASE_MODEL, PACKAGED_BASE_MODEL
from tests.serving.conftest import PEFT_KINDS, AdapterFactory, LiveServing, peft_adapter

USER = [{"role": "user", "content": "Who was born in the river town?"}]


def _chat(client: openai.OpenAI, model: str, content: str, **options: Any) -> Any:
    options.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **options)


def test_chat_and_completions_for_base_and_fine_tuned_models(start_serving, make_adapter: AdapterFactory) -> None:
    served: LiveServing = start_serving()
    tuned = served.register(make_adapter(1), "one")
    client = served.client()

    base_reply = client.chat.completions.create(model=DEMO_BASE_MODEL, messages=USER, temperature=0, max_tokens=12)
    tuned_reply = client.chat.completions.create(model=tuned, messages=USER, temperature=0, max_tokens=12)
    for reply, model in ((base_reply, DEMO_BASE_MODEL), (tuned_reply, tuned)):
        assert reply.object == "chat.completion" and reply.model == model and reply.id.startswith("chatcmpl-")
        assert reply.choices[0].message.role == "assistant" and reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
        assert 0 < reply.usage.completion_tokens <= 12
    assert base_reply.choices[0].message.content != tuned_reply.choices[0].message.content

    # Streaming gives the same text as non-streaming, then a usage chunk, then [DONE].
    chunks = list(client.chat.completions.create(model=tuned, messages=USER, temperature=0, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == tuned_reply.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == tuned_reply.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == tuned_reply.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])

    # Legacy completions, several prompts and n choices each; token-id prompts too.
    completion = client.completions.create(model=tuned, prompt=["The cat", "A river town"], max_tokens=6,
                                           temperature=0, n=2, logprobs=2)
    assert completion.object == "text_completion" and [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert completion.choices[0].text == completion.choices[1].text  # greedy: n copies agree
    assert completion.choices[0].text != completion.choices[2].text
    assert len(completion.choices[0].logprobs.tokens) == completion.usage.completion_tokens // 4 or \
        completion.choices[0].finish_reason == "stop"
    assert all(len(top) == 2 for top in completion.choices[0].logprobs.top_logprobs)
    ids = client.completions.create(model=tuned, prompt=[[5, 6, 7, 8]], max_tokens=4, temperature=0)
    assert ids.usage.prompt_tokens == 4

    streamed = list(client.completions.create(model=tuned, prompt="The cat", max_tokens=6, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == \
        client.completions.create(model=tuned, prompt="The cat", max_tokens=6, temperature=0).choices[0].text


def test_every_adapter_type_ftaas_trains_is_served(start_serving, make_adapter: AdapterFactory, base_model: Any,
                                                   tmp_path: Path) -> None:
    """IA3, prompt-tuning and prefix-tuning models answer chat completions beside a LoRA model and the base
    model, concurrently, streamed or not (the same text); a prompt-learning adapter's virtual tokens count
    against the context like prompt tokens."""
    served: LiveServing = start_serving(serving_max_context=96)
    client = served.client()
    models = [DEMO_BASE_MODEL, served.register(make_adapter(3), "lora")]
    models += [served.register(peft_adapter(base_model, kind, tmp_path / kind, seed=i), kind.replace("_", "-"))
               for i, kind in enumerate(PEFT_KINDS)]
    alone = [_chat(client, model, "Who was born in the river town?", max_tokens=10).choices[0].message.content
             for model in models]
    assert len(set(alone)) == len(models), "each adapter should answer differently"
    with ThreadPoolExecutor(len(models)) as pool:
        together = list(pool.map(lambda m: _chat(client, m, "Who was born in the river town?", max_tokens=10)
                                 .choices[0].message.content, models))
    assert together == alone
    for model, text in zip(models, alone, strict=True):
        chunks = client.chat.completions.create(model=model, messages=USER, temperature=0, max_tokens=10, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text

    prompt_tokens = _chat(client, models[0], "Who was born in the river town?", max_tokens=1).usage.prompt_tokens
    prefix_model = models[-1]  # 6 virtual tokens before the prompt
    _chat(client, prefix_model, "Who was born in the river town?", max_tokens=96 - prompt_tokens - 6)
    with pytest.raises(openai.BadRequestError) as too_long:
        _chat(client, prefix_model, "Who was born in the river town?", max_tokens=96 - prompt_tokens - 5)
    assert too_long.value.body["code"] == "context_length_exceeded"


def test_sampling_parameters(start_serving, make_adapter: AdapterFactory) -> None:
    served: LiveServing = start_serving()
    tuned = served.register(make_adapter(2), "two")
    client = served.client()

    with_logprobs = _chat(client, tuned, "the cat", max_tokens=5, logprobs=True, top_logprobs=3)
    content = with_logprobs.choices[0].logprobs.content
    assert len(content) == with_logprobs.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-6  # greedy picks the most likely token
        assert entry.token == entry.top_logprobs[0].token

    seeded = [client.chat.completions.create(model=tuned, messages=USER, temperature=1.0, seed=7, max_tokens=16, n=3)
              for _ in range(2)]
    assert [c.message.content for c in seeded[0].choices] == [c.message.content for c in seeded[1].choices]
    assert len({c.message.content for c in seeded[0].choices}) > 1, "n choices sample independently"

    full = _chat(client, tuned, "the cat", max_tokens=16).choices[0].message.content
    assert len(full) > 3
    stop = full[2:4]
    cut = _chat(client, tuned, "the cat", max_tokens=16, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].message.content == full[:full.find(stop)]


def test_errors_map_to_the_sdk_exception_classes(start_serving, make_adapter: AdapterFactory) -> None:
    served: LiveServing = start_serving(serving_max_context=128)
    tuned = served.register(make_adapter(3), "three")
    client, stranger = served.client(), served.client(served.other_key)

    with pytest.raises(openai.NotFoundError) as unknown:
        _chat(client, "ft:ftaas-tiny:alpha:nope:x", "hi")
    assert (unknown.value.code, unknown.value.param) == ("model_not_found", "model")
    with pytest.raises(openai.NotFoundError):
        _chat(stranger, tuned, "hi")  # another project's model is indistinguishable from a missing one
    with pytest.raises(openai.NotFoundError) as foreign_part:
        stranger.chat.completions.create(model=DEMO_BASE_MODEL, messages=USER, extra_body={
            "adapters": [{"model": tuned, "weight": 1.0}]})
    assert foreign_part.value.param == "adapters.0.model"

    bad: list[tuple[dict[str, Any], str | None]] = [
        ({"temperature": 5}, "temperature"), ({"n": 99}, "n"), ({"top_logprobs": 3}, None),
        ({"max_tokens": 500}, "max_tokens"), ({"presence_penalty": 1.0}, None), ({"max_tokens": 0}, "max_tokens"),
    ]
    for options, param in bad:
        with pytest.raises(openai.BadRequestError) as refused:
            _chat(client, tuned, "hi", **options)
        if param:
            assert refused.value.param == param, options
    with pytest.raises(openai.BadRequestError) as too_long:
        _chat(client, tuned, "the cat " * 200)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as not_an_adapter:
        client.chat.completions.create(model=tuned, messages=USER, extra_body={"adapters": [{"model": tuned}]})
    assert not_an_adapter.value.param == "model"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=tuned, prompt=[[999_999]], max_tokens=2)
    with pytest.raises(openai.BadRequestError) as never_fits:  # more choices than slots + queue: not a 429
        client.completions.create(model=tuned, prompt=["a"] * 40, n=16, max_tokens=2)
    assert never_fits.value.param == "n"


def test_mixed_batch_over_http_equals_one_at_a_time(start_serving, make_adapter: AdapterFactory) -> None:
    """8 adapters + the base model, 32 concurrent greedy requests: each identical to the same request alone
    (with batch-invariant serving; the default trades that for one stream's latency, docs/serving.md)."""
    served: LiveServing = start_serving(serving_batch_invariant=True)
    names = [DEMO_BASE_MODEL] + [served.register(make_adapter(40 + i, r=4 + 2 * i), f"m{i}") for i in range(8)]
    client = served.client()
    requests = [(names[i % 9], f"request {i}: " + "the cat likes music " * (i % 7), 4 + (i * 5) % 30) for i in range(32)]

    def run(request: tuple[str, str, int]) -> tuple[str, str | None]:
        model, content, max_tokens = request
        reply = _chat(client, model, content, max_tokens=max_tokens)
        return reply.choices[0].message.content, reply.choices[0].finish_reason

    alone = [run(r) for r in requests]
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(run, requests))
    assert together == alone
    assert len({text for text, _ in alone}) > 20


def test_adapter_composition_is_served_without_a_training_job(start_serving, make_adapter: AdapterFactory) -> None:
    served: LiveServing = start_serving()
    first, second = served.register(make_adapter(61), "first"), served.register(make_adapter(62, r=4), "second")
    client = served.client()

    def composed(parts: list[dict[str, Any]]) -> str:
        return client.chat.completions.create(model=DEMO_BASE_MODEL, messages=USER, temperature=0, max_tokens=12,
                                              extra_body={"adapters": parts}).choices[0].message.content

    alone = client.chat.completions.create(model=first, messages=USER, temperature=0, max_tokens=12)
    assert composed([{"model": first, "weight": 1.0}]) == alone.choices[0].message.content
    mixed = composed([{"model": first, "weight": 0.5}, {"model": second, "weight": 0.5}])
    assert mixed != alone.choices[0].message.content
    assert composed([{"model": first, "weight": 0.5}, {"model": second, "weight": 0.5}]) == mixed
    metrics = httpx.get(served.base_url + "/metrics").text
    assert "ftaas_serving_adapter_loads_total" in metrics and 'source="store"' in metrics


def test_overload_is_429_with_retry_after_and_a_cancelled_stream_frees_its_slot(start_serving) -> None:
    served: LiveServing = start_serving(serving_max_batch=1, serving_max_queue=1)
    client = served.client()
    body = {"model": DEMO_BASE_MODEL, "messages": USER, "max_tokens": 400, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {served.key}"}
    engine_ready = _chat(client, DEMO_BASE_MODEL, "warm up", max_tokens=1)
    assert engine_ready.usage.completion_tokens == 1

    with httpx.Client(base_url=served.base_url, headers=headers, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as running:  # holds the only slot
            lines = running.iter_lines()
            assert next(lines).startswith("data: ")
            with http.stream("POST", "/v1/chat/completions", json=body) as queued:  # fills the queue
                assert queued.status_code == 200
                refused = http.post("/v1/chat/completions", json=body | {"stream": False})
                assert refused.status_code == 429
                assert int(refused.headers["retry-after"]) >= 1
                assert refused.json()["error"]["code"] == "server_overloaded"
                with pytest.raises(openai.RateLimitError):
                    _chat(client, DEMO_BASE_MODEL, "hi", max_tokens=2)
        # Both streams were closed early: their sequences are cancelled and the slot is free again.
        started = time.monotonic()
        reply = _chat(client, DEMO_BASE_MODEL, "hi", max_tokens=3)
        assert reply.usage.completion_tokens == 3 and time.monotonic() - started < 10
    engine = served.inference.engines()[0]
    deadline = time.monotonic() + 10
    while engine.running or engine.waiting:
        assert time.monotonic() < deadline, "the cancelled streams still hold the engine"
        time.sleep(0.05)
    metrics = httpx.get(served.base_url + "/metrics").text
    assert 'ftaas_serving_sequences_total{base_model="ftaas-tiny",finish_reason="cancelled"}' in metrics
    assert 'ftaas_serving_rejected_requests_total{base_model="ftaas-tiny",reason="server_overloaded"}' in metrics
    for series in ("ftaas_serving_queue_depth", "ftaas_serving_running_sequences",
                   "ftaas_serving_time_to_first_token_seconds_bucket", "ftaas_serving_output_tokens_per_second_bucket"):
        assert series in metrics


def test_deleting_a_model_evicts_it_and_it_is_no_longer_served(start_serving, make_adapter: AdapterFactory) -> None:
    served: LiveServing = start_serving()
    tuned = served.register(make_adapter(71), "gone")
    client = served.client()
    _chat(client, tuned, "hi", max_tokens=2)
    assert served.inference.adapters.snapshot()["device"]
    assert client.models.delete(tuned).deleted
    assert served.inference.adapters.snapshot()["device"] == {}
    assert not any((served.settings.serving.cache_path / "adapters").iterdir())
    with pytest.raises(openai.NotFoundError):
        _chat(client, tuned, "hi", max_tokens=2)


def test_a_non_streaming_client_that_disconnects_cancels_its_sequence(start_serving) -> None:
    served: LiveServing = start_serving(serving_max_batch=1)
    client = served.client()
    _chat(client, DEMO_BASE_MODEL, "warm up", max_tokens=1)
    # 1,000 tokens of the demo model take 0.45 s on the decode kernels (2.8 s without them; AMD EPYC, 2 cores)
    impatient = served.client(timeout=0.15)
    with pytest.raises(openai.APITimeoutError):
        _chat(impatient, DEMO_BASE_MODEL, "hi", max_tokens=1000)
    engine = served.inference.engines()[0]
    deadline = time.monotonic() + 10
    while engine.running:
        assert time.monotonic() < deadline, "the abandoned request still decodes"
        time.sleep(0.05)
    assert threading.active_count() < 100


def test_tokens_per_window_are_counted_at_admission_as_openai_counts_them(start_serving) -> None:
    """A request counts the larger of max_tokens x n and its prompt estimated at 4 characters per token;
    over the key's tokens the SDK gets a 429 with the `-tokens` headers, and a request that could never fit
    is told not to retry."""
    served: LiveServing = start_serving(rate_limit_tokens_per_key=100, rate_limit_window_seconds=30)
    client = served.client().with_options(max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=DEMO_BASE_MODEL, messages=USER, max_tokens=30, n=2, temperature=0)  # 60 > ceil(36 / 4)
    assert raw.headers["x-ratelimit-limit-tokens"] == "100"
    assert raw.headers["x-ratelimit-remaining-tokens"] == "40"
    assert int(raw.headers["x-ratelimit-remaining-requests"]) > 0
    prompt = "x" * 100  # ceil(100 / 4) = 25 tokens, more than max_tokens
    raw = client.completions.with_raw_response.create(model=DEMO_BASE_MODEL, prompt=prompt, max_tokens=1)
    assert raw.headers["x-ratelimit-remaining-tokens"] == "15"
    with pytest.raises(openai.RateLimitError) as limited:
        _chat(client, DEMO_BASE_MODEL, "hi", max_tokens=20)
    headers = limited.value.response.headers
    assert limited.value.body["type"] == "tokens" and limited.value.code == "rate_limit_exceeded"
    assert headers["x-ratelimit-remaining-tokens"] == "0" and int(headers["retry-after"]) >= 1
    assert "x-should-retry" not in headers
    with pytest.raises(openai.RateLimitError) as too_large:
        _chat(client, DEMO_BASE_MODEL, "hi", max_tokens=101)
    assert too_large.value.response.headers["x-should-retry"] == "false"
    assert "Request too large" in too_large.value.message
    served.client(served.other_key).chat.completions.create(  # another key has its own tokens
        model=DEMO_BASE_MODEL, messages=USER, max_tokens=20)


def test_ignore_eos_and_min_tokens_as_vllm_takes_them(start_serving) -> None:
    """The extra body fields benchmarks send (vLLM's): on the real model, a short answer ends at its end-of-
    turn token; `ignore_eos` runs it to max_tokens, `min_tokens` past its natural end; bad values are 400s."""
    served: LiveServing = start_serving()
    client = served.client()
    ask = {"model": PACKAGED_BASE_MODEL, "temperature": 0, "max_tokens": 24,
           "messages": [{"role": "user", "content": "What is 2+2? Reply with the number only."}]}
    natural = client.chat.completions.create(**ask)
    ends_at = natural.usage.completion_tokens
    assert natural.choices[0].finish_reason == "stop" and ends_at < 16, natural  # "2 + 2 = 4", end of turn
    running = client.chat.completions.create(**ask, extra_body={"ignore_eos": True})
    assert running.choices[0].finish_reason == "length" and running.usage.completion_tokens == 24
    held = client.chat.completions.create(**ask, extra_body={"min_tokens": ends_at + 3})
    assert held.usage.completion_tokens >= ends_at + 3
    assert held.choices[0].message.content.startswith(natural.choices[0].message.content)
    for extra, param in (({"min_tokens": 25}, "min_tokens"), ({"min_tokens": -1}, "min_tokens"),
                         ({"ignore_eos": "maybe"}, "ignore_eos")):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(**ask, extra_body=extra)
        assert param in str(refused.value.body), refused.value.body
