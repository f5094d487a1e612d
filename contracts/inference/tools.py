"""OpenAI-format tools and tool calls as a chat template can render them: natively, or in the ftaas tool format.

Training renders conversations with the base model's own chat template, and serving renders requests the same
way; both go through `prepare_conversation`, so what a model learned to emit is what serving parses.

A template that renders `tools` and assistant `tool_calls` itself (Qwen 2.5, Llama 3.1, Hermes, ...) gets the
messages as they are. A template that does not (ChatML as SmolLM2 ships it renders neither: a tool-calling
turn would be trained as an empty string) gets them rewritten in the ftaas tool format (Hermes-style, because
many open models were tuned on it), documented in docs/training.md:

* the tools, as JSON signatures inside `<tools></tools>` with instructions, appended to the system message
  (one is added when the conversation has none);
* each assistant tool call as its own line `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` after the
  message's text (arguments parsed from OpenAI's JSON string when they parse; kept as a string otherwise);
* each tool result as a user turn `<tool_response>{"name"?: ..., "content": ...}</tool_response>`.

Legacy `functions` / `function_call` / role `function` are converted to tools first. Nothing is dropped.
"""

from __future__ import annotations

import json
from typing import Any

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
#: Names no real tool would have, to see whether a template renders tools and tool calls.
_PROBE_TOOL = "ftaas_probe_tool_5f3a"
_PROBE_CALL = "ftaas_probe_call_9c1e"


def tools_instructions(tools: list[dict[str, Any]]) -> str:
    """The system-message block that presents `tools` in the ftaas tool format."""
    signatures = "\n".join(json.dumps(tool, ensure_ascii=False, sort_keys=True) for tool in tools)
    return ("You may call one or more functions to assist with the user query. The functions you can call are "
            f"described within <tools></tools> XML tags:\n<tools>\n{signatures}\n</tools>\n"
            "For each function call, return a JSON object with the function name and arguments within "
            f'{TOOL_CALL_OPEN}{TOOL_CALL_CLOSE} XML tags:\n{TOOL_CALL_OPEN}{{"name": <function-name>, '
            f'"arguments": <args-json-object>}}{TOOL_CALL_CLOSE}')


def format_tool_call(name: str, arguments: str) -> str:
    """One call in the ftaas tool format (arguments as a JSON object where OpenAI's string parses)."""
    try:
        parsed: Any = json.loads(arguments)
    except (TypeError, ValueError):
        parsed = arguments
    return f"{TOOL_CALL_OPEN}{json.dumps({'name': name, 'arguments': parsed}, ensure_ascii=False)}{TOOL_CALL_CLOSE}"


def legacy_to_tools(functions: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """OpenAI's legacy `functions` as `tools`."""
    if functions is None:
        return None
    return [{"type": "function", "function": function} for function in functions]


def _with_legacy_calls(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Legacy `function_call` and role `function` as `tool_calls` and role `tool` (ids made up, paired)."""
    converted: list[dict[str, Any]] = []
    pending: list[str] = []
    for index, message in enumerate(messages):
        if message.get("role") == "assistant" and message.get("function_call") is not None:
            call_id = f"call_legacy_{index}"
            pending.append(call_id)
            message = {**{k: v for k, v in message.items() if k != "function_call"},
                       "tool_calls": [{"id": call_id, "type": "function", "function": message["function_call"]}]}
        elif message.get("role") == "function":
            message = {**{k: v for k, v in message.items() if k != "role"}, "role": "tool",
                       "tool_call_id": pending.pop(0) if pending else f"call_legacy_{index}"}
        converted.append(message)
    return converted


def template_renders_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders both a tool's signature and an assistant's tool call
    (probed with names no real tool has); a template that fails on tool messages does not."""
    tool = {"type": "function", "function": {"name": _PROBE_TOOL, "description": "probe",
                                              "parameters": {"type": "object", "properties": {}}}}
    messages = [{"role": "user", "content": "probe"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_probe", "type": "function", "function": {"name": _PROBE_CALL, "arguments": "{}"}}]}]
    try:
        text = tokenizer.apply_chat_template(messages, tools=[tool], tokenize=False)
    except Exception:  # a template that raises on tool calls or None content renders no tools
        return False
    return _PROBE_TOOL in text and _PROBE_CALL in text


def prepare_conversation(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *,
                         native: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools) to hand the chat template: as they are where the template renders tools (`native`),
    else in the ftaas tool format with no `tools` argument left. Messages keep their other keys (weight)."""
    messages = _with_legacy_calls(messages)
    if native or (not tools and not any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)):
        return messages, tools or None
    names = {call.get("id"): call["function"]["name"] for m in messages for call in (m.get("tool_calls") or [])}
    rewritten: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            text = message.get("content") or ""
            calls = [format_tool_call(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
            content = "\n".join(([text] if text else []) + calls)
            rewritten.append({**{k: v for k, v in message.items() if k != "tool_calls"}, "content": content})
        elif role == "tool":
            response: dict[str, Any] = {"content": message.get("content") or ""}
            name = names.get(message.get("tool_call_id"), message.get("name"))
            if name is not None:
                response = {"name": name, **response}
            rewritten.append({"role": "user", "content": f"<tool_response>\n{json.dumps(response, ensure_ascii=False)}"
                                                         "\n</tool_response>"})
        else:
            rewritten.append(message)
    if tools:
        block = tools_instructions(tools)
        if rewritten and rewritten[0].get("role") in ("system", "developer"):
            first = rewritten[0]
            rewritten[0] = {**first, "content": f"{first.get('content') or ''}\n\n{block}".lstrip()}
        else:
            rewritten.insert(0, {"role": "system", "content": block})
    return rewritten, None


def parse_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """A completion in the ftaas tool format -> (the text outside tool calls, or None when it is only calls;
    OpenAI-shaped calls: ids `call_<n>`, `type: function`, `arguments` as a JSON string).

    A block whose body is not a JSON object with a string `name` is not a call and stays in the text, whole:
    nothing the model wrote is dropped. Arguments that are a JSON string are passed through as that string."""
    calls: list[dict[str, Any]] = []
    kept: list[str] = []
    position = 0
    while True:
        start = text.find(TOOL_CALL_OPEN, position)
        end = text.find(TOOL_CALL_CLOSE, start + len(TOOL_CALL_OPEN)) if start >= 0 else -1
        if start < 0 or end < 0:
            kept.append(text[position:])
            break
        body = text[start + len(TOOL_CALL_OPEN):end].strip()
        call = _call_from(body)
        if call is None:
            kept.append(text[position:end + len(TOOL_CALL_CLOSE)])
        else:
            kept.append(text[position:start])
            name, arguments = call
            calls.append({"id": f"call_{len(calls)}", "type": "function",
                          "function": {"name": name, "arguments": arguments}})
        position = end + len(TOOL_CALL_CLOSE)
    content = "".join(kept).strip()
    return (content or None) if calls else text, calls


def _call_from(body: str) -> tuple[str, str] | None:
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("name"), str):
        return None
    arguments = parsed.get("arguments", {})
    return parsed["name"], arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
