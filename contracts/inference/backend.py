"""The interface between the API's inference routes (api.inference.router) and the engine that answers
them (serving.service.InferenceService). The routes see only this, so the API package never imports the
engine (or torch); `ftaas up` and `ftaas serve` wire an implementation in at start-up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from contracts.inference.schemas import ChatCompletionRequest, CompletionRequest

#: (token text, logprob, [(alternative text, logprob)]) per generated token.
TokenLogprobs = list[tuple[str, float, list[tuple[str, float]]]]


@dataclass
class ChoiceResult:
    """One finished choice of a request."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    #: per generated token, when asked for
    logprobs: TokenLogprobs = field(default_factory=list)
    #: OpenAI-shaped tool calls parsed from the output (chat requests with tools); `text` is then the content
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    #: the generated token ids (up to a stop sequence's end; the stop token too where TokenSampling keeps it),
    #: and each one's log probability (when asked for)
    token_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    #: the prompt's log probabilities (None for its first token), where TokenSampling asks for them
    prompt_logprobs: list[float | None] | None = None


@dataclass(frozen=True)
class TokenSampling:
    """What a token-level client (the training API's sampler) asks beyond a completion request."""

    #: the prompt's own log probabilities, each token's given the ones before it
    prompt_logprobs: bool = False
    #: token ids that end a sample, besides the model's own end-of-turn tokens
    stop_token_ids: tuple[int, ...] = ()
    #: the stop token that ended a sample is part of its token ids, with its log probability (RL loops train on
    #: it: a model that never sees it learns never to stop)
    keep_stop_token: bool = False


@dataclass
class Delta:
    """A piece of one choice's output, as the stream reports it."""

    index: int
    text: str = ""
    logprobs: TokenLogprobs = field(default_factory=list)
    finish_reason: str | None = None
    #: tool calls completed in this piece, each with its `index` among the choice's calls
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


class GenerationStream(Protocol):
    """The running choices of one request: iterate `deltas()` (streaming) or await `collect()`; `cancel()`
    frees the engine's slots (a client that went away). Errors surface as `contracts.errors.FTaaSError`."""

    results: list[ChoiceResult]
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int: ...

    def deltas(self) -> AsyncIterator[Delta]: ...

    async def collect(self) -> list[ChoiceResult]: ...

    def cancel(self) -> None: ...


class InferenceBackend(Protocol):
    """What the inference routes need from an engine."""

    def resolve_request(self, principal: Any, request: ChatCompletionRequest | CompletionRequest) -> tuple[Any, Any]:
        """Blocking, on the database: the request's model (and weighted adapters) in the caller's project;
        `contracts.errors.NotFound` (404) or `InvalidRequest` (400) otherwise. The result is opaque to the
        caller and handed back to `start`."""

    def start(self, resolved: Any, parts: Any, request: ChatCompletionRequest | CompletionRequest,
              loop: asyncio.AbstractEventLoop, tokens: TokenSampling | None = None) -> GenerationStream:
        """Blocking (loads models on first use): submit the request's sequences; events are delivered on
        `loop`. `tokens`: a token-level client's extra asks."""

    def render_metrics(self) -> tuple[bytes, str]:
        """The Prometheus exposition of the engine's metrics, and its content type."""
