"""Wire shapes of POST /v1/chat/completions and POST /v1/completions (OpenAI's chat and legacy completions APIs).

Parameters ftaas does not implement are refused with a 400 that names them (never silently ignored) when
they would change the output: non-zero penalties, `logit_bias`, `best_of`, `echo`, `suffix`. `user` is
accepted as information. `store` and `metadata` keep a chat completion (request and response) in the caller's
project, as OpenAI's stored completions do (api.stored_completions).

Chat requests take OpenAI's function calling (`tools`, `tool_choice`, `parallel_tool_calls`, and the legacy
`functions` / `function_call`, converted to those) and structured outputs (`response_format` `json_object` and
`json_schema`); serving renders the tools as training did (basemodels.conversations) and enforces
`required` / named tool choices and response formats by constrained decoding (serving.grammar).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts.metadata import check_metadata

MAX_CHOICES = 16


#: OpenAI's rule for function (and json_schema) names.
NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
MAX_TOOLS = 128


class FunctionCall(BaseModel):
    name: str = Field(min_length=1)
    arguments: str = ""


class ToolCall(BaseModel):
    """An assistant message's call of a tool, as a client sends the conversation back."""

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None

    @model_validator(mode="after")
    def _check_tool_fields(self) -> ChatMessage:
        if (self.tool_calls or self.function_call) and self.role != "assistant":
            raise ValueError(f"only assistant messages may hold tool calls, not a '{self.role}' message")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs the 'tool_call_id' of the call it answers")
        if self.role == "function" and not self.name:
            raise ValueError("a 'function' message needs the 'name' of the function it answers")
        return self

    def as_template_message(self) -> dict[str, Any]:
        """The message as a chat template (and basemodels.conversations) takes it: text content, and its
        tool calls, tool call id and name where it has them (`prepare_conversation` decides how a
        participant's name is rendered)."""
        message: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.function_call is not None:
            message["function_call"] = self.function_call.model_dump()
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        if self.name is not None:  # a participant's or the answered function's (basemodels.conversations)
            message["name"] = self.name
        return message

    def text(self) -> str:
        if isinstance(self.content, list):
            parts = []
            for part in self.content:
                if part.get("type") != "text":
                    raise ValueError("only text content parts are supported")
                parts.append(str(part.get("text", "")))
            return "".join(parts)
        return self.content or ""


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    #: a JSON Schema object; absent means the function takes no arguments
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @property
    def parameters_schema(self) -> dict[str, Any]:
        return self.parameters if self.parameters is not None else {"type": "object", "properties": {}}


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str = Field(min_length=1)


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    #: absent: any JSON value that is an object (as `json_object`)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _check(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type 'json_schema' needs a 'json_schema' object")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f"'json_schema' is only allowed with response_format type 'json_schema', not "
                             f"'{self.type}'")
        return self

    @property
    def output_schema(self) -> dict[str, Any] | None:
        """The JSON Schema the output must satisfy; None for plain text."""
        if self.type == "json_object":
            return {"type": "object"}
        if self.type == "json_schema":
            assert self.json_schema is not None
            return self.json_schema.schema_ if self.json_schema.schema_ is not None else {"type": "object"}
        return None


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
        wanted = self.max_new_tokens
        if wanted is not None and self.min_tokens > wanted:
            raise ValueError(f"'min_tokens' ({self.min_tokens}) must not exceed max_tokens ({wanted})")
        return self

    @property
    def max_new_tokens(self) -> int | None:
        """The completion allowance the request asks for (each request kind names it its own way)."""
        raise NotImplementedError

    def prompt_token_estimate(self) -> tuple[int, int]:
        """(prompts, their tokens estimated) for `rate_limit_tokens`."""
        raise NotImplementedError

    def rate_limit_tokens(self) -> int:
        """Tokens this request counts against a tokens-per-window limit, as OpenAI counts them at admission:
        the larger of its completion allowance (max_tokens x choices) and its prompts' estimated tokens."""
        prompts, prompt_tokens = self.prompt_token_estimate()
        allowance = self.max_new_tokens
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
    tools: list[ToolDefinition] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    #: legacy function calling, converted to `tools` / `tool_choice`
    functions: list[FunctionDefinition] | None = Field(default=None, max_length=MAX_TOOLS)
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    response_format: ResponseFormat | None = None
    #: keep this completion (request and response) in the project; None: the deployment's default
    store: bool | None = None
    #: stored with the completion, filterable in the list of stored completions
    metadata: dict[str, str] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_metadata(value)

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        for message in self.messages:
            message.text()
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("'top_logprobs' requires 'logprobs': true")
        if self.functions is not None or self.function_call is not None:
            if self.tools is not None or self.tool_choice is not None:
                raise ValueError("send either 'tools' / 'tool_choice' or the legacy 'functions' / "
                                 "'function_call', not both")
            if self.function_call is not None and self.functions is None:
                raise ValueError("'function_call' is only allowed when 'functions' are specified")
            self.tools = [ToolDefinition(type="function", function=f) for f in self.functions or []]
            call = self.function_call
            self.tool_choice = NamedToolChoice(type="function", function=call) if isinstance(
                call, NamedFunction) else call
            self.functions = self.function_call = None
        if self.tools is not None and not self.tools:
            raise ValueError("'tools' must hold at least one tool (omit it for none)")
        if self.tool_choice is not None and not self.tools:
            raise ValueError("'tool_choice' is only allowed when 'tools' are specified")
        if self.parallel_tool_calls is not None and not self.tools:
            raise ValueError("'parallel_tool_calls' is only allowed when 'tools' are specified")
        names = [tool.function.name for tool in self.tools or []]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"tool names must be unique; repeated: {', '.join(duplicated)}")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"'tool_choice' names the function '{self.tool_choice.function.name}', which is not "
                             f"among the request's tools ({', '.join(names)})")
        return self

    @property
    def tool_mode(self) -> str:
        """How tools are used: 'none' (no tools, or tool_choice none), 'auto', 'required', or 'named'."""
        if not self.tools or self.tool_choice == "none":
            return "none"
        if isinstance(self.tool_choice, NamedToolChoice):
            return "named"
        return self.tool_choice or "auto"

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        """The tools as OpenAI's JSON (what a chat template or the ftaas tool format renders)."""
        if not self.tools:
            return None
        return [tool.model_dump(exclude_none=True) for tool in self.tools]

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def prompt_token_estimate(self) -> tuple[int, int]:
        """(prompts, their tokens estimated from characters) for `rate_limit_tokens`."""
        characters = sum(len(message.role) + len(message.text()) + sum(
            len(call.function.name) + len(call.function.arguments) for call in message.tool_calls or [])
            for message in self.messages)
        characters += sum(len(tool.model_dump_json()) for tool in self.tools or [])
        return 1, math.ceil(characters / 4)

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
        texts = [v for v in value if isinstance(v, str)]
        ids = [v for v in value if isinstance(v, int)]
        if len(ids) == len(value):
            return [ids]
        if len(texts) == len(value):
            return list(texts)
        return [v for v in value if isinstance(v, list)]
