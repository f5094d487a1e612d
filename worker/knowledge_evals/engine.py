"""Knowledge-eval generation through the serving engine in this process.

`EngineGenerator` answers an eval's conversations through `serving.service.InferenceService`: the same chat
template, tokenization, continuous batching, stop handling and detokenization that `/v1/chat/completions`
uses, with the spec's decoding settings for both models. Requests are submitted together and the engine
batches them; `concurrency=1` submits one at a time (the benchmark's baseline). `EngineJudge` is the LLM
judge answered by the same engine (evals.scoring.Judge).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from typing import Any

from contracts.errors import InvalidRequest, Overloaded
from evals.run import Progress


class EngineGenerator:
    """Generation through `InferenceService` in this process, on behalf of `principal`'s project.

    `model` may be a base model, an `ft:` model or a checkpoint of that project, or a `ModelOverride`
    registered with `override()` (a job's just-trained adapter, before its model row exists). A base model
    whose family the engine cannot compute, or an adapter it refuses (trained biases, a replaced output
    layer: docs/serving.md), is answered by `serving.reference.ReferenceGenerator` instead (slower; the same greedy answers up to
    rounding).
    Runs its asyncio loop on a thread of its own: the serving code sets the calling thread's torch
    threads to one (see serving.threads.single_threaded_torch), which must not leak into a trainer.
    """

    def __init__(self, inference: Any, principal: Any, *, concurrency: int | None = None) -> None:
        self.inference = inference
        self.principal = principal
        # Two batches in flight by default: the engine always has the next sequences waiting to join, and
        # no request waits in the queue long enough to meet the serving request deadline.
        self.concurrency = concurrency or 2 * inference.settings.max_batch
        self._overrides: dict[str, Any] = {}
        self._reference: Any = None

    def override(self, name: str, resolved: Any) -> None:
        self._overrides[name] = resolved

    def generate(self, model: str, conversations: Sequence[list[dict[str, str]]], *, max_new_tokens: int,
                 temperature: float, top_p: float = 1.0, seed: int | None = None,
                 progress: Progress | None = None) -> list[str]:
        resolved = self._overrides.get(model) or self.inference.resolve(self.principal, model)
        if not self.inference.serves(resolved.base_model):
            # A family the batched engine cannot compute: transformers' own generate answers instead.
            return self._reference_answers(resolved, conversations, max_new_tokens=max_new_tokens,
                                           temperature=temperature, top_p=top_p, seed=seed, progress=progress)
        try:
            return self._engine_answers(resolved, model, conversations, max_new_tokens=max_new_tokens,
                                        temperature=temperature, top_p=top_p, seed=seed, progress=progress)
        except InvalidRequest as exc:
            if exc.code != "unsupported_adapter":
                raise
            # An adapter the engine refuses (trained biases, replaced modules...): the first request
            # is refused before anything is generated, so the whole set goes to the reference path.
            return self._reference_answers(resolved, conversations, max_new_tokens=max_new_tokens,
                                           temperature=temperature, top_p=top_p, seed=seed, progress=progress)

    def _reference_answers(self, resolved: Any, conversations: Sequence[list[dict[str, str]]],
                           **decoding: Any) -> list[str]:
        from serving.reference import ReferenceGenerator

        self._reference = self._reference or ReferenceGenerator(self.inference.loader, self.inference.adapters)
        return self._reference.generate(resolved.base_model, resolved.adapter, conversations, **decoding)

    def _engine_answers(self, resolved: Any, model: str, conversations: Sequence[list[dict[str, str]]], *,
                        max_new_tokens: int, temperature: float, top_p: float, seed: int | None,
                        progress: Progress | None) -> list[str]:
        from contracts.inference.schemas import ChatCompletionRequest

        requests = [ChatCompletionRequest(model=model, messages=messages, temperature=temperature, top_p=top_p,
                                          max_tokens=max_new_tokens, seed=seed) for messages in conversations]
        return [result.text for result in self._run(resolved, requests, progress)]

    def answer(self, model: str, requests: Sequence[dict[str, Any]], *, max_new_tokens: int, temperature: float,
               seed: int | None = None, progress: Progress | None = None) -> list[dict[str, Any]]:
        """Whole chat requests (messages, tools, tool_choice, parallel_tool_calls, response_format) answered as
        /v1/chat/completions answers them: `{"content", "tool_calls", "finish_reason"}` each. Served families
        only: a request with tools or a format cannot fall back to the reference path (InvalidRequest)."""
        from contracts.inference.schemas import ChatCompletionRequest

        resolved = self._overrides.get(model) or self.inference.resolve(self.principal, model)
        keys = ("messages", "tools", "tool_choice", "parallel_tool_calls", "response_format")
        chat_requests = [ChatCompletionRequest.model_validate(
            {**{k: r[k] for k in keys if r.get(k) is not None}, "model": model, "temperature": temperature,
             "max_tokens": max_new_tokens, "seed": seed}) for r in requests]
        if not self.inference.serves(resolved.base_model):
            if any(r.get(k) for r in requests for k in keys[1:]):
                raise InvalidRequest(f"{resolved.base_model} is answered by the reference path, which takes "
                                     "neither tools nor response_format.", code="unsupported_model", param="model")
            texts = self._reference_answers(resolved, [list(r["messages"]) for r in requests],
                                            max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0,
                                            seed=seed, progress=progress)
            return [{"content": text, "tool_calls": None, "finish_reason": None} for text in texts]
        results = self._run(resolved, chat_requests, progress)
        return [{"content": r.text or None,
                 "tool_calls": [{k: v for k, v in c.items() if k != "index"} for c in r.tool_calls] or None,
                 "finish_reason": r.finish_reason} for r in results]

    def _run(self, resolved: Any, requests: Sequence[Any], progress: Progress | None) -> list[Any]:
        """Each request's first result, the engine batching them (at most `concurrency` in flight)."""

        async def run_all() -> list[Any]:
            loop = asyncio.get_running_loop()
            gate = asyncio.Semaphore(self.concurrency)

            async def one(request: Any) -> Any:
                async with gate:
                    while True:
                        try:
                            generation = self.inference.start(resolved, [], request, loop)
                            break
                        except Overloaded as exc:  # another user's traffic fills the queue: wait our turn
                            await asyncio.sleep(min(5.0, exc.retry_after))
                    results = await generation.collect()
                if progress is not None:
                    progress(1)
                return results[0]

            return list(await asyncio.gather(*(one(r) for r in requests)))

        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ftaas-eval") as pool:
            return pool.submit(asyncio.run, run_all()).result()


class EngineJudge:
    """The LLM judge served by ftaas itself (the default when no external judge endpoint is configured):
    the same interface as `evals.judge.JudgeClient`, answered by `EngineGenerator`."""

    def __init__(self, generator: EngineGenerator) -> None:
        self.generator = generator

    def complete(self, model: str, system: str, user: str, *, temperature: float, max_tokens: int = 8) -> str:
        return self.complete_many(model, [(system, user)], temperature=temperature, max_tokens=max_tokens)[0]

    def complete_many(self, model: str, prompts: list[tuple[str, str]], *, temperature: float,
                      max_tokens: int = 8) -> list[str]:
        conversations = [[{"role": "system", "content": system}, {"role": "user", "content": user}] if system
                         else [{"role": "user", "content": user}] for system, user in prompts]
        return self.generator.generate(model, conversations, max_new_tokens=max_tokens, temperature=temperature,
                                       top_p=1.0, seed=0)
