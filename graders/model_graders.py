"""`score_model` and `label_model`: a chat model grades the sample.

The grader's messages (templates rendered with the item and the sample) go to an OpenAI-compatible chat
endpoint with a JSON-schema `response_format` asking for `{"result": ...}`: a number for score_model, one of
the labels for label_model. A last system message states that format, so that models without constrained
decoding still answer in it. Which endpoint answers is the deployment's choice (an external server, or ftaas's
own serving engine); it is given as a `ChatEndpoint`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol, cast


@dataclass(frozen=True)
class ChatReply:
    """What the endpoint answered: the text (or a refusal) and the tokens it counted."""

    text: str | None
    refusal: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class EndpointError(Exception):
    """The endpoint failed (`retryable`: unreachable, overloaded, 5xx) or refused the request (4xx)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class ChatEndpoint(Protocol):
    def chat(self, model: str, messages: list[dict[str, Any]], *, response_format: dict[str, Any],
             sampling: dict[str, Any]) -> ChatReply: ...


class OpenAICompatibleEndpoint:
    """Any OpenAI-compatible `/v1/chat/completions`, through the official `openai` SDK."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 60.0, max_retries: int = 2) -> None:
        import openai

        self._openai = openai
        self.base_url = base_url
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)

    def close(self) -> None:
        self._client.close()

    def chat(self, model: str, messages: list[dict[str, Any]], *, response_format: dict[str, Any],
             sampling: dict[str, Any]) -> ChatReply:
        openai = self._openai
        try:
            # The messages and format are built by graders.grading in the wire shape the SDK's TypedDicts describe.
            completion = self._client.chat.completions.create(
                model=model, messages=cast(Any, messages), response_format=cast(Any, response_format),
                **sampling)
        except openai.APIStatusError as exc:
            retryable = exc.status_code >= 500 or exc.status_code in (408, 409, 429)
            raise EndpointError(f"{self.base_url} answered HTTP {exc.status_code}: {exc.message}",
                                retryable=retryable) from exc
        except openai.APIError as exc:
            raise EndpointError(f"{self.base_url} unreachable: {exc}", retryable=True) from exc
        if not completion.choices:
            return ChatReply(text=None)
        message = completion.choices[0].message
        usage = completion.usage
        return ChatReply(text=message.content, refusal=getattr(message, "refusal", None),
                         prompt_tokens=usage.prompt_tokens if usage else 0,
                         completion_tokens=usage.completion_tokens if usage else 0)


def score_format(low: float, high: float) -> tuple[dict[str, Any], str]:
    """(response_format, instruction) for a score in [low, high]."""
    schema = {"type": "object", "properties": {"result": {"type": "number", "minimum": low, "maximum": high}},
              "required": ["result"], "additionalProperties": False}
    instruction = (f'Answer with JSON only: {{"result": <a number from {low:g} to {high:g}>}}.')
    return {"type": "json_schema", "json_schema": {"name": "score", "schema": schema, "strict": True}}, instruction


def label_format(labels: list[str]) -> tuple[dict[str, Any], str]:
    """(response_format, instruction) for one of `labels`."""
    schema = {"type": "object", "properties": {"result": {"type": "string", "enum": labels}},
              "required": ["result"], "additionalProperties": False}
    instruction = f'Answer with JSON only: {{"result": <one of {json.dumps(labels)}>}}.'
    return {"type": "json_schema", "json_schema": {"name": "label", "schema": schema, "strict": True}}, instruction


def parse_result(text: str | None) -> Any:
    """The `result` of a reply; raises ValueError when the reply is not such JSON."""
    if not text:
        raise ValueError("the grader model sent no content")
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(body)
    except ValueError:
        raise ValueError(f"the grader model's reply is not JSON: {text[:200]!r}") from None
    if not isinstance(value, dict) or "result" not in value:
        raise ValueError(f"the grader model's reply has no 'result': {text[:200]!r}")
    return value["result"]
