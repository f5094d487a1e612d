"""Routes: POST /v1/chat/completions, for base models, fine-tuned models and checkpoints."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from api.dependencies import AuthenticatedCaller, Services
from serving.schemas import ChatCompletionRequest
from serving.service import Generation, InferenceService

router = APIRouter(prefix="/v1", tags=["inference"])


def _engine(services: Services) -> InferenceService:
    return services.extras["inference"]


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, services: Services, caller: AuthenticatedCaller) -> Any:
    engine = _engine(services)
    resolved = await caller.run(lambda principal: engine.resolve(principal, body.model))
    completion_id = "chatcmpl-" + secrets.token_hex(12)
    created = int(time.time())
    if not body.stream:
        # Generation runs on Starlette's thread pool, never the API's small one: a long completion must not
        # hold a thread that short database work is waiting for.
        result = await run_in_threadpool(engine.complete, resolved, body)
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": created, "model": body.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": _usage(result), "system_fingerprint": None,
        })

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events() -> AsyncIterator[str]:
        def chunk(delta: dict[str, Any], finish: str | None) -> str:
            return "data: " + json.dumps({
                "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                **({"usage": None} if include_usage else {}),
            }) + "\n\n"

        yield chunk({"role": "assistant", "content": ""}, None)
        final: Generation | None = None
        pieces = engine.stream(resolved, body)
        try:
            async for piece in iterate_in_threadpool(pieces):
                if isinstance(piece, Generation):
                    final = piece
                elif piece:
                    yield chunk({"content": piece}, None)
        finally:
            # A client that went away stops the stream here: close the generator at once so that it stops
            # generating and releases the engine, rather than whenever it is garbage-collected.
            await run_in_threadpool(pieces.close)
        assert final is not None
        yield chunk({}, final.finish_reason)
        if include_usage:
            yield "data: " + json.dumps({
                "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
                "choices": [], "usage": _usage(final)}) + "\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _usage(result: Generation) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}
