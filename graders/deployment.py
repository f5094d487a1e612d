"""The grading context of a process, from its settings: which endpoint answers model graders and the python
sandbox's limits. `EngineEndpoint` lets an `InferenceBackend` (ftaas's own serving engine) answer model
graders in the caller's project, when no external grader endpoint is configured."""

from __future__ import annotations

import asyncio
from typing import Any

from contracts.errors import FTaaSError, InfrastructureError
from contracts.inference.backend import InferenceBackend
from contracts.inference.schemas import ChatCompletionRequest
from contracts.settings import GraderSettings
from graders.grading import GradingContext
from graders.model_graders import ChatEndpoint, ChatReply, EndpointError, OpenAICompatibleEndpoint
from graders.sandbox import SandboxLimits

NO_ENDPOINT = ("this process has no grader model endpoint: set FTAAS_GRADER_MODEL_BASE_URL, or run the "
               "grader where ftaas serves models (ftaas up, ftaas serve)")


class EngineEndpoint:
    """Model-grader requests answered by ftaas's own engine, as `principal`'s project (its models and
    fine-tunes). Blocking: call from a thread other than `loop`'s, which delivers the engine's events."""

    def __init__(self, backend: InferenceBackend, principal: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._backend = backend
        self._principal = principal
        self._loop = loop

    def chat(self, model: str, messages: list[dict[str, Any]], *, response_format: dict[str, Any],
             sampling: dict[str, Any]) -> ChatReply:
        try:
            request = ChatCompletionRequest.model_validate(
                {"model": model, "messages": messages, "response_format": response_format, **sampling})
            resolved, parts = self._backend.resolve_request(self._principal, request)
            stream = self._backend.start(resolved, parts, request, self._loop)
            results = asyncio.run_coroutine_threadsafe(stream.collect(), self._loop).result()
        except FTaaSError as exc:
            raise EndpointError(f"ftaas's engine could not grade with {model!r}: {exc.public_message}",
                                retryable=isinstance(exc, InfrastructureError)) from exc
        except ValueError as exc:
            raise EndpointError(f"the grader request for {model!r} is invalid: {exc}", retryable=False) from exc
        text = results[0].text if results else None
        return ChatReply(text=text, prompt_tokens=stream.prompt_tokens,
                         completion_tokens=sum(result.completion_tokens for result in results))


def grading_context(settings: GraderSettings, *, engine: ChatEndpoint | None = None) -> GradingContext:
    """The context for `settings`: the configured external endpoint, else `engine` (may be None)."""
    endpoint: ChatEndpoint | None = engine
    if settings.model_base_url:
        key = settings.model_api_key.get_secret_value() if settings.model_api_key else "none"
        endpoint = OpenAICompatibleEndpoint(settings.model_base_url, key)
    limits = SandboxLimits(timeout_seconds=settings.python_timeout_seconds,
                           memory_bytes=settings.python_memory_mb << 20)
    return GradingContext(endpoint=endpoint, endpoint_missing=NO_ENDPOINT, sandbox_limits=limits,
                          max_concurrency=settings.model_max_concurrency)
