"""Inference routes: POST /v1/chat/completions, POST /v1/completions, GET /metrics.

Handlers parse, resolve the model in the caller's project, start a `GenerationStream` and shape its output in
the OpenAI wire format (JSON, or SSE `data:` lines ending with `data: [DONE]`). A client that disconnects
cancels its sequences: streaming through the generator's `finally`, non-streaming by a disconnect watch.
A chat completion to be stored (api.stored_completions) is kept once it has finished, streamed or not.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.dependencies import ApiServices, AuthenticatedCaller, Inference, Services
from contracts.errors import FTaaSError
from contracts.inference.backend import ChoiceResult, Delta, GenerationStream, InferenceBackend
from contracts.inference.schemas import ChatCompletionRequest, CompletionRequest
from db import ids
from db.projects import Principal

router = APIRouter(tags=["inference"])


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, service: Inference, services: Services,
                           caller: AuthenticatedCaller) -> Any:
    return await _complete(body, request, service, caller, keeper=services)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, service: Inference,
                      caller: AuthenticatedCaller) -> Any:
    return await _complete(body, request, service, caller, keeper=None)


@router.get("/metrics", include_in_schema=False)
async def metrics(service: Inference) -> Response:
    body, content_type = service.render_metrics()
    return Response(body, media_type=content_type)


async def _complete(body: ChatCompletionRequest | CompletionRequest, request: Request, service: InferenceBackend,
                    caller: AuthenticatedCaller, *, keeper: ApiServices | None) -> Any:
    """`keeper`: the services that store chat completions (None for legacy completions, which OpenAI never
    stores)."""
    chat = isinstance(body, ChatCompletionRequest)

    def admit(principal: Principal) -> tuple[Principal, Any, Any, bool]:
        store = keeper is not None and isinstance(body, ChatCompletionRequest) and \
            keeper.stored_completions.should_store(body)
        resolution = service.resolve_request(principal, body)
        caller.charge_tokens(principal, body.rate_limit_tokens())  # a model that is not found costs nothing
        return principal, *resolution, store

    principal, resolved, parts, store = await caller.run(admit)
    keep: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    if store:
        assert keeper is not None and isinstance(body, ChatCompletionRequest)
        stored = keeper.stored_completions

        async def keep(response: dict[str, Any]) -> None:
            await keeper.run_blocking(lambda: stored.record(principal, body, response))

    loop = asyncio.get_running_loop()
    # Off the API's small thread pool: the first request for a model or adapter loads it (seconds).
    generation = await run_in_threadpool(service.start, resolved, parts, body, loop)
    shape = _ChatShape(body, generation) if chat else _CompletionShape(body, generation)
    if body.stream:
        return StreamingResponse(_sse(shape, generation, body.include_usage, keep), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
    collect = asyncio.ensure_future(generation.collect())
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
        if collect not in done:
            generation.cancel()
            collect.cancel()
            return Response(status_code=499)
        results = collect.result()
    finally:
        watch.cancel()
        if not collect.done():
            collect.cancel()
            generation.cancel()
    payload = shape.full(results, _usage(generation))
    if keep is not None:
        await keep(payload)
    return JSONResponse(payload)


async def _disconnected(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)


async def _sse(shape: _Shape, generation: GenerationStream, include_usage: bool,
               keep: Callable[[dict[str, Any]], Awaitable[None]] | None) -> AsyncIterator[str]:
    def line(payload: dict[str, Any]) -> str:
        return "data: " + json.dumps(payload, separators=(",", ":")) + "\n\n"

    try:
        for opening in shape.opening():
            yield line(opening | ({"usage": None} if include_usage else {}))
        async for delta in generation.deltas():
            yield line(shape.chunk(delta) | ({"usage": None} if include_usage else {}))
        if include_usage:
            yield line(shape.usage_chunk(_usage(generation)))
        if keep is not None:  # the whole answer, as the non-streaming response would have returned it
            await keep(shape.full(generation.results, _usage(generation)))
    except FTaaSError as exc:
        # Headers are gone; the error travels in the stream, the way the SDK reads it.
        yield line({"error": {"message": exc.public_message, "type": "server_error", "param": exc.param,
                              "code": exc.code}})
    finally:
        generation.cancel()
    yield "data: [DONE]\n\n"


def _usage(generation: GenerationStream) -> dict[str, int]:
    completion = generation.completion_tokens
    return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": completion,
            "total_tokens": generation.prompt_tokens + completion}


class _Shape:
    """How one endpoint's results look on the wire (chat or legacy completions)."""

    prefix = ""
    chunk_name = ""

    def __init__(self, body: Any, generation: GenerationStream) -> None:
        self.body = body
        self.generation = generation
        self.id = self.new_id()
        self.created = int(time.time())

    def new_id(self) -> str:
        return self.prefix + secrets.token_hex(12)

    def envelope(self, name: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": name, "created": self.created, "model": self.body.model,
                "system_fingerprint": None, "choices": choices}

    def opening(self) -> list[dict[str, Any]]:
        return []

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return self.envelope(self.chunk_name, []) | {"usage": usage}

    def chunk(self, delta: Delta) -> dict[str, Any]:
        raise NotImplementedError

    def full(self, results: list[ChoiceResult], usage: dict[str, int]) -> dict[str, Any]:
        raise NotImplementedError


class _ChatShape(_Shape):
    prefix = ids.CHAT_COMPLETION
    chunk_name = "chat.completion.chunk"

    def new_id(self) -> str:
        return ids.new_id(self.prefix)  # time-ordered: stored completions list and page on it

    def opening(self) -> list[dict[str, Any]]:
        return [self.envelope(self.chunk_name, [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                 "logprobs": None, "finish_reason": None}
                                                for i in range(len(self.generation.results))])]

    def chunk(self, delta: Delta) -> dict[str, Any]:
        content: dict[str, Any] = {"content": delta.text} if delta.text or (
            delta.finish_reason is None and not delta.tool_calls) else {}
        if delta.tool_calls:  # each call whole in one piece (the SDK assembles pieces by `index`)
            content["tool_calls"] = delta.tool_calls
        return self.envelope(self.chunk_name, [{
            "index": delta.index, "delta": content, "finish_reason": delta.finish_reason,
            "logprobs": {"content": _chat_logprobs(delta.logprobs)} if delta.logprobs else None}])

    def full(self, results: list[ChoiceResult], usage: dict[str, int]) -> dict[str, Any]:
        choices = [{"index": r.index, "message": _message(r), "finish_reason": r.finish_reason,
                    "logprobs": {"content": _chat_logprobs(r.logprobs)} if self.body.logprobs else None}
                   for r in results]
        return self.envelope("chat.completion", choices) | {"usage": usage}


def _message(result: ChoiceResult) -> dict[str, Any]:
    if not result.tool_calls:
        return {"role": "assistant", "content": result.text, "refusal": None}
    calls = [{k: v for k, v in call.items() if k != "index"} for call in result.tool_calls]
    return {"role": "assistant", "content": result.text or None, "refusal": None, "tool_calls": calls}


class _CompletionShape(_Shape):
    prefix = "cmpl-"
    chunk_name = "text_completion"

    def chunk(self, delta: Delta) -> dict[str, Any]:
        return self.envelope(self.chunk_name, [{
            "index": delta.index, "text": delta.text, "finish_reason": delta.finish_reason,
            "logprobs": _completion_logprobs(delta.logprobs) if delta.logprobs else None}])

    def full(self, results: list[ChoiceResult], usage: dict[str, int]) -> dict[str, Any]:
        choices = [{"index": r.index, "text": r.text, "finish_reason": r.finish_reason,
                    "logprobs": _completion_logprobs(r.logprobs) if self.body.logprobs is not None else None}
                   for r in results]
        return self.envelope("text_completion", choices) | {"usage": usage}


def _chat_logprobs(entries: list[tuple[str, float, list[tuple[str, float]]]]) -> list[dict[str, Any]]:
    def one(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return [one(token, logprob) | {"top_logprobs": [one(t, lp) for t, lp in top]} for token, logprob, top in entries]


def _completion_logprobs(entries: list[tuple[str, float, list[tuple[str, float]]]]) -> dict[str, Any]:
    offsets, position = [], 0
    for token, _, _ in entries:
        offsets.append(position)
        position += len(token)
    return {"tokens": [t for t, _, _ in entries], "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [{t: lp for t, lp in top} for _, _, top in entries], "text_offset": offsets}

