"""Lines of OpenAI's chat fine-tuning format made from requests and answers, and the prompts inside such lines:
what turns stored completions and a distilled model's samples into training data (api.stored_completions,
transfer.distill) and training data back into prompts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

#: Roles a chat training file holds; a request's `developer` message is OpenAI's newer name for `system`.
TRAINING_ROLE = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
                 "tool": "tool", "function": "tool"}


def training_line(request: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """One chat training line from a chat request (`messages`, optional `tools`, `parallel_tool_calls`) and one
    of its answers (an assistant message: `content`, optional `tool_calls`)."""
    messages = [training_message(m) for m in request["messages"]]
    reply: dict[str, Any] = {"role": "assistant", "content": answer.get("content")}
    if answer.get("tool_calls"):
        reply["tool_calls"] = [{"id": c["id"], "type": "function", "function": c["function"]}
                               for c in answer["tool_calls"]]
    line: dict[str, Any] = {"messages": [*messages, reply]}
    if request.get("tools"):
        line["tools"] = request["tools"]
    if request.get("parallel_tool_calls") is not None:
        line["parallel_tool_calls"] = request["parallel_tool_calls"]
    return line


def training_message(message: dict[str, Any]) -> dict[str, Any]:
    """A request's message as a training file holds it (text content; legacy function turns as tool turns)."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(str(part.get("text", "")) for part in content)
    out: dict[str, Any] = {"role": TRAINING_ROLE[message["role"]], "content": content}
    for key in ("name", "tool_calls", "tool_call_id"):
        if message.get(key) is not None:
            out[key] = message[key]
    if message["role"] == "function":  # legacy: the function's answer, to the call named call_0 below
        out.pop("name", None)
        out["tool_call_id"] = "call_0"
    if message.get("function_call"):
        out["tool_calls"] = [{"id": "call_0", "type": "function", "function": message["function_call"]}]
    return out


def prompt_of(line: dict[str, Any]) -> dict[str, Any] | None:
    """The request a chat training line answers: its messages before the last assistant turn, with its tools
    and any `response_format` the line asks for; None for a line with no user turn before that answer."""
    messages = line.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    end = len(messages)
    if isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        end -= 1
    asked = [m for m in messages[:end] if isinstance(m, dict)]
    if not any(m.get("role") == "user" for m in asked):
        return None
    request: dict[str, Any] = {"messages": [{k: v for k, v in m.items() if k != "weight"} for m in asked]}
    if line.get("tools"):
        request["tools"] = line["tools"]
    for key in ("parallel_tool_calls", "response_format"):
        if line.get(key) is not None:
            request[key] = line[key]
    return request


class ChatLineError(ValueError):
    """A line of chat JSONL that is not one: `number` (1-based) and what is wrong with it."""

    def __init__(self, number: int, problem: str) -> None:
        super().__init__(f"line {number}: {problem}")
        self.number = number
        self.problem = problem


def chat_requests(content: str) -> Iterator[tuple[int, dict[str, Any], dict[str, Any]]]:
    """(line number, the line, the request it answers: `prompt_of`) for each non-blank line of chat JSONL. A
    line that is not JSON, or not a chat line with a user turn, raises ChatLineError."""
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError as exc:
            raise ChatLineError(number, f"not JSON ({exc})") from None
        request = prompt_of(line) if isinstance(line, dict) else None
        if request is None:
            raise ChatLineError(number, 'not a chat line with a user turn ({"messages": [...]}, optionally ending '
                                        "with the answer)")
        yield number, line, request
