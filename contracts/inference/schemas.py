"""Wire shapes of POST /v1/chat/completions and POST /v1/completions (OpenAI's chat and legacy completions APIs).

Parameters ftaas does not implement are refused with a 400 that names them (never silently ignored) when
they would change the output: non-zero penalties, `logit_bias`, tools, non-text response formats,
`best_of`, `echo`, `suffix`. Purely informational ones (`user`, `metadata`, `store`) are accepted.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_CHOICES = 16


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            parts = []
            for part in self.content:
                if part.get("type") != "text":
                    raise ValueError("only text content parts are supported")
                parts.append(str(part.get("text", "")))
            return "".join(parts)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class AdapterWeight(BaseModel):
    """One part of a per-request adapter composition (ftaas extension)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="An `ft:` model or checkpoint of the request's base model.")
    weight: float = Field(default=1.0, ge=-4, le=4)


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    adapters: list[AdapterWeight] | None = Field(
        default=None, max_length=8,
        description="ftaas extension: serve a weighted sum of these adapters on `model` (a base model).")
    min_tokens: int = Field(
        default=0, ge=0, description="vLLM extension: generate at least this many tokens before an end-of-"
                                     "sequence token or a stop sequence may end a choice.")
    ignore_eos: bool = Field(
        default=False, description="vLLM extension: do not stop at the model's end-of-sequence tokens (only "
                                   "max_tokens, the context and stop sequences end a choice), as benchmarks do.")

    @model_validator(mode="after")
    def _check_common(self) -> _Sampling:
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("at most 4 stop sequences")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ValueError(f"'{name}' is not supported by this server; send 0 or omit it")
        if self.logit_bias:
            raise ValueError("'logit_bias' is not supported by this server")
        if self.stream_options is not None and not self.stream:
            raise ValueError("'stream_options' is only allowed when 'stream' is true")
        if self.adapters is not None and not self.adapters:
            raise ValueError("'adapters' needs at least one entry")
        wanted = self.max_new_tokens  # type: ignore[attr-defined]
        if wanted is not None and self.min_tokens > wanted:
            raise ValueError(f"'min_tokens' ({self.min_tokens}) must not exceed max_tokens ({wanted})")
        return self

    def rate_limit_tokens(self) -> int:
        """Tokens this request counts against a tokens-per-window limit, as OpenAI counts them at admission:
        the larger of its completion allowance (max_tokens x choices) and its prompts' estimated tokens."""
        prompts, prompt_tokens = self.prompt_token_estimate()  # type: ignore[attr-defined]
        allowance = self.max_new_tokens  # type: ignore[attr-defined]
        return max(prompts * self.n * (allowance or 0), prompt_tokens)

    @property
    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        for message in self.messages:
            message.text()
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("'top_logprobs' requires 'logprobs': true")
        if self.tools:
            raise ValueError("'tools' (function calling) is not supported by this server")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise ValueError("only the 'text' response format is supported")
        return self

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def prompt_token_estimate(self) -> tuple[int, int]:
        """(prompts, their tokens estimated from characters) for `rate_limit_tokens`."""
        return 1, math.ceil(sum(len(message.role) + len(message.text()) for message in self.messages) / 4)

    @property
    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("the prompt list is empty")
        if isinstance(value, list) and len(value) > 64 and not all(isinstance(v, int) for v in value):
            raise ValueError("at most 64 prompts per request")
        return value

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        if self.echo:
            raise ValueError("'echo' is not supported by this server")
        if self.suffix:
            raise ValueError("'suffix' (insertion) is not supported by this server")
        if self.best_of not in (None, 1):
            raise ValueError("'best_of' other than 1 is not supported by this server")
        return self

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def logprob_count(self) -> int | None:
        return self.logprobs

    def prompt_token_estimate(self) -> tuple[int, int]:
        """(prompts, their tokens: token-id prompts count their ids, text 4 characters per token)."""
        prompts = self.prompts()
        return len(prompts), sum(len(p) if isinstance(p, list) else math.ceil(len(p) / 4) for p in prompts)

    def prompts(self) -> list[str | list[int]]:
        """The request's prompts: text, or token ids."""
        value = self.prompt
        if isinstance(value, str):
            return [value]
        if all(isinstance(v, int) for v in value):
            return [list(value)]  # type: ignore[arg-type]
        return list(value)  # type: ignore[arg-type]
