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


_PROBE_SPEAKER = "ftaas_probe_speaker_7q"
#: roles whose `name` names a participant (a tool or function message's names the function it answers)
PARTICIPANT_ROLES = ("system", "developer", "user", "assistant")


def template_renders_names(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a message's participant `name` (probed with a name no
    conversation has)."""
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "probe", "name": _PROBE_SPEAKER}],
                                             tokenize=False)
    except Exception:
        return False
    return _PROBE_SPEAKER in text


def _with_speaker_names(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Participant names written into the content ("Alice: hello") for a template that ignores `name`, so the
    model sees who speaks instead of the name being dropped. An assistant message's name becomes part of the
    reply (in training data too: the model learns to answer as the data shows it)."""
    named = []
    for message in messages:
        name = message.get("name")
        if name and message.get("role") in PARTICIPANT_ROLES:
            content = message.get("content") or ""
            message = {**{k: v for k, v in message.items() if k != "name"},
                       "content": f"{name}: {content}" if content else f"{name}:"}
        named.append(message)
    return named


def prepare_conversation(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *,
                         native: bool, names_native: bool = False
                         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools) to hand the chat template: as they are where the template renders tools (`native`),
    else in the ftaas tool format with no `tools` argument left; participant names as they are where the
    template renders them (`names_native`), else written into the content. Messages keep their other keys
    (weight)."""
    messages = _with_legacy_calls(messages)
    if not names_native:
        messages = _with_speaker_names(messages)
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
    """A whole completion in the ftaas tool format -> (its content: the text outside tool calls, None when it
    is only calls; OpenAI-shaped calls with ids `call_<n>`), as `ToolCallStream` parses it streamed.

    A block whose body is not a JSON object with a string `name` is not a call and stays in the content,
    whole: nothing the model wrote is dropped. Arguments that are a JSON string are passed through as that
    string."""
    counter = iter(range(1 << 30))
    stream = ToolCallStream(new_id=lambda: f"call_{next(counter)}")
    shown, _ = stream.feed(text)
    content = shown + stream.finish()
    calls = [{k: v for k, v in call.items() if k != "index"} for call in stream.calls]
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


class ToolCallStream:
    """Parses tool calls out of a completion as it streams: text in, (content, calls) out.

    Text that is, or could still become, a `<tool_call>...</tool_call>` block is held back until the block
    closes; a closed block that is a call becomes an OpenAI tool call (a fresh `call_...` id, `type: function`,
    JSON-string `arguments`), any other block is content, whole. Whitespace that only separates calls (the
    format's line breaks) is not content. At the end whatever is held (an unclosed block) is content: nothing
    the model wrote is lost. `parse_tool_calls` is the same on a whole text."""

    def __init__(self, new_id: Any = None) -> None:
        import secrets

        self._new_id = new_id or (lambda: "call_" + secrets.token_hex(12))
        self._held = ""
        self._pending_space = ""  # trailing whitespace not shown yet (it may only separate calls)
        self._after_call = False
        self.calls: list[dict[str, Any]] = []

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """Add streamed text; returns the content that can be shown now and the calls completed by it."""
        self._held += text
        content: list[str] = []
        calls: list[dict[str, Any]] = []
        while True:
            start = self._held.find(TOOL_CALL_OPEN)
            if start < 0:
                keep = _partial_open(self._held)
                content.append(self._held[:len(self._held) - keep])
                self._held = self._held[len(self._held) - keep:]
                break
            end = self._held.find(TOOL_CALL_CLOSE, start + len(TOOL_CALL_OPEN))
            content.append(self._held[:start])
            if end < 0:
                self._held = self._held[start:]
                break
            block = self._held[start:end + len(TOOL_CALL_CLOSE)]
            self._held = self._held[end + len(TOOL_CALL_CLOSE):]
            call = _call_from(block[len(TOOL_CALL_OPEN):-len(TOOL_CALL_CLOSE)].strip())
            if call is None:
                content.append(block)
                continue
            shown = self._content("".join(content), before_call=True)
            content = [shown] if shown else []
            calls.append({"index": len(self.calls), "id": self._new_id(), "type": "function",
                          "function": {"name": call[0], "arguments": call[1]}})
            self.calls.append(calls[-1])
        return self._content("".join(content)), calls

    def finish(self) -> str:
        """The content still held (an unclosed block, trailing text) once the completion ended."""
        text, self._held = self._pending_space + self._held, ""
        self._pending_space = ""
        if self.calls:
            text = (text.lstrip() if self._after_call else text).rstrip()
        return text

    def _content(self, text: str, *, before_call: bool = False) -> str:
        """Content to show now. Whitespace next to a call separates, it is not content: trailing whitespace
        is held until more content follows, and whitespace right after a call is not shown."""
        text = self._pending_space + text
        self._pending_space = ""
        if self._after_call:
            text = text.lstrip()
        if before_call:
            self._after_call = True
            return text.rstrip()
        if text:
            self._after_call = False
        stripped = text.rstrip()
        self._pending_space = text[len(stripped):]
        return stripped


def _partial_open(text: str) -> int:
    """How many characters at the end of `text` could be the start of a `<tool_call>` tag."""
    for size in range(min(len(TOOL_CALL_OPEN) - 1, len(text)), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-size:]):
            return size
    return 0
