"""Training-file validation: streaming, line by line, with 1-based line numbers and stable error codes.

Three formats are recognised (docs/architecture.md, "Wire contract"), decided by the first example and required of all:

* chat (`{"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool}`), for supervised jobs;
* preference (`{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}`),
  for DPO jobs;
* prompt_completion (`{"prompt": "...", "completion": "..."}`), for supervised jobs;
* reinforcement (`{"messages": [...], ...other fields}` whose messages end before the answer: the last is not
  an assistant message), for reinforcement jobs; the other fields are what graders read as `{{item.*}}`.

Chat and reinforcement lines both hold `messages`; a line is reinforcement data when its messages end with a
turn other than the assistant's and it has fields beyond chat's or no assistant turn to train on. A file
holding both kinds takes the kind most of its lines have, and each line of the other kind is reported.

Memory stays bounded whatever the file size: bytes arrive in chunks, only the current line is held (a
line over `max_line_bytes` is reported and skipped, not buffered), and only the first
`max_reported_errors` errors are kept (the count is exact). Blank lines are ignored.

Error codes: empty_file, invalid_utf8, line_too_long, invalid_json, not_an_object, missing_messages,
mixed_formats, unrecognized_key, invalid_messages, invalid_message, unrecognized_role,
message_unrecognized_key, missing_content, invalid_content, invalid_weight, invalid_tool_calls,
missing_tool_call_id, invalid_tools, example_missing_assistant_message, invalid_input,
invalid_preferred_output, invalid_non_preferred_output, invalid_prompt, invalid_completion,
example_ends_with_answer, too_few_examples, checksum_mismatch (set by the caller when stored bytes fail verification).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from contracts.files.formats import CHAT, PREFERENCE, PROMPT_COMPLETION, REINFORCEMENT
from contracts.files.validation import ValidationOutcome

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call", "refusal"}
CHAT_KEYS = {"messages", "tools", "parallel_tool_calls", "functions"}
PREFERENCE_KEYS = {"input", "preferred_output", "non_preferred_output"}
PROMPT_COMPLETION_KEYS = {"prompt", "completion"}
#: The most item fields of a reinforcement file whose presence is tracked per line (ValidationOutcome.item_fields).
MAX_ITEM_FIELDS = 256


@dataclass(frozen=True)
class ValidationLimits:
    min_examples: int = 10
    max_reported_errors: int = 100
    max_line_bytes: int = 32 * 1024 * 1024


class ExampleError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Report:
    limits: ValidationLimits
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0

    def add(self, line: int | None, code: str, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < self.limits.max_reported_errors:
            self.errors.append({"line": line, "code": code, "message": message})


def iter_lines(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, raw bytes) per line; bytes is None for a line longer than the limit."""
    pending = bytearray()
    overflow = False
    number = 0
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not overflow:
                pending += piece
                if len(pending) > max_line_bytes:
                    overflow = True
                    pending.clear()
            if end < 0:
                break
            number += 1
            yield number, None if overflow else bytes(pending)
            pending.clear()
            overflow = False
            start = end + 1
    if pending or overflow:
        number += 1
        yield number, None if overflow else bytes(pending)


def validate_jsonl(chunks: Iterable[bytes], limits: ValidationLimits) -> ValidationOutcome:
    """Every line of a training file checked: JSON objects, one format throughout (the first example's), each
    example as that format requires; errors by line number, the examples counted."""
    report = _Report(limits)
    data_format: str | None = None
    examples = 0
    saw_bytes = False
    kinds = _MessageKinds(limits.max_reported_errors)
    fields = _ItemFields()
    for number, raw in iter_lines(chunks, limits.max_line_bytes):
        saw_bytes = True
        counted, example = _decoded(number, raw, limits, report)
        examples += counted
        if example is None:
            continue
        line_format = detect_format(example)
        if line_format is None:
            report.add(number, "missing_messages",
                       f"Line {number} has no 'messages' (chat format), 'input'/'preferred_output' (preference "
                       "format) or 'prompt'/'completion' (prompt-completion format).")
            continue
        family = CHAT if line_format == REINFORCEMENT else line_format
        if data_format is None:
            data_format = family
        elif family != data_format:
            report.add(number, "mixed_formats",
                       f"Line {number} is in the {line_format} format but the file started in the {data_format} format.")
            continue
        # A chat line with fields of its own is an answered reinforcement line or a chat line with unknown keys:
        # which one it is, and so its error, depends on the file's kind (decided at the end).
        extra = line_format == CHAT and bool(set(example) - CHAT_KEYS)
        try:
            (check_reinforcement if extra else CHECKS[line_format])(example)
        except ExampleError as exc:
            report.add(number, exc.code, f"Line {number}: {exc.message}")
        if family == CHAT:
            kinds.add(number, line_format, unknown_keys=_unknown_keys(example, CHAT_KEYS) if extra else None)
            if line_format == REINFORCEMENT:
                fields.add(number, example)
    if data_format == CHAT:
        data_format = kinds.decide(report)
    if not saw_bytes or examples == 0:
        report.add(None, "empty_file", "The file is empty: it has no examples.")
    elif report.error_count == 0 and examples < limits.min_examples:
        report.add(None, "too_few_examples",
                   f"The file has {examples} example{'s' if examples != 1 else ''}; "
                   f"at least {limits.min_examples} are required.")
    return ValidationOutcome(
        ok=report.error_count == 0,
        data_format=data_format,
        example_count=examples,
        errors=report.errors,
        error_count=report.error_count,
        summary=summarise(report.errors, report.error_count),
        item_fields=fields.first_missing if data_format == REINFORCEMENT else {},
    )


class _MessageKinds:
    """Which lines of a file with `messages` are chat and which reinforcement data: the count of each and the
    first `keep` line numbers of each (enough to report the minority's lines)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.lines: dict[str, list[int]] = {CHAT: [], REINFORCEMENT: []}
        self.counts = {CHAT: 0, REINFORCEMENT: 0}
        self.first: str | None = None
        #: chat lines with fields of their own: (line, the unknown-key message), reported if the file is chat
        self.unknown: list[tuple[int, str]] = []
        self.unknown_count = 0

    def add(self, number: int, kind: str, *, unknown_keys: str | None = None) -> None:
        self.first = self.first or kind
        self.counts[kind] += 1
        if len(self.lines[kind]) < self.keep:
            self.lines[kind].append(number)
        if unknown_keys is not None:
            self.unknown_count += 1
            if len(self.unknown) < self.keep:
                self.unknown.append((number, unknown_keys))

    def decide(self, report: _Report) -> str:
        """The file's format (the kind most lines have; the first line's on a tie), each other line reported."""
        assert self.first is not None
        other = REINFORCEMENT if self.first == CHAT else CHAT
        kind = other if self.counts[other] > self.counts[self.first] else self.first
        minority = REINFORCEMENT if kind == CHAT else CHAT
        for number in self.lines[minority]:
            if kind == CHAT:
                report.add(number, "example_missing_assistant_message",
                           f"Line {number}: no assistant message to train on (its messages end before the answer, as "
                           "reinforcement data does; the other lines are chat examples).")
            else:
                report.add(number, "example_ends_with_answer",
                           f"Line {number} ends with an assistant message: reinforcement data ends before the answer "
                           "the model is to write (a grader scores what it writes).")
        report.error_count += self.counts[minority] - len(self.lines[minority])
        if kind == CHAT:
            for number, message in self.unknown:
                report.add(number, "unrecognized_key", f"Line {number}: {message}")
            report.error_count += self.unknown_count - len(self.unknown)
        return kind


class _ItemFields:
    """For each top-level field of reinforcement lines (other than chat's), the first line that lacks it."""

    def __init__(self) -> None:
        self.first_missing: dict[str, int | None] = {}
        self.first_line: int | None = None

    def add(self, number: int, example: dict[str, Any]) -> None:
        names = set(example) - CHAT_KEYS
        for name in names:
            if name not in self.first_missing and len(self.first_missing) < MAX_ITEM_FIELDS:
                # every earlier reinforcement line lacked it
                self.first_missing[name] = self.first_line
        for name, missing in self.first_missing.items():
            if missing is None and name not in names:
                self.first_missing[name] = number
        if self.first_line is None:
            self.first_line = number


def _decoded(number: int, raw: bytes | None, limits: ValidationLimits, report: _Report) -> tuple[bool, dict | None]:
    """(whether the line counts as an example, the JSON object it holds or None): blank lines do not count; a
    line that is too long, not UTF-8, not JSON or not an object counts and is reported."""
    if raw is None:
        report.add(number, "line_too_long", f"Line {number} is longer than {limits.max_line_bytes} bytes.")
        return True, None
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # UTF-8 byte order mark
    raw = raw.rstrip(b"\r")
    if not raw.strip():
        return False, None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        report.add(number, "invalid_utf8", f"Line {number} is not valid UTF-8 (byte {exc.start + 1} of the line).")
        return True, None
    try:
        example = json.loads(text)
    except json.JSONDecodeError as exc:
        report.add(number, "invalid_json", f"Line {number} is not valid JSON: {exc.msg} at column {exc.colno}.")
        return True, None
    if not isinstance(example, dict):
        report.add(number, "not_an_object",
                   f"Line {number} is a JSON {_json_type(example)}, not an object; each line must be one example.")
        return True, None
    return True, example


def summarise(errors: list[dict[str, Any]], error_count: int, shown: int = 20) -> str | None:
    if error_count == 0:
        return None
    head = f"{error_count} error{'s' if error_count != 1 else ''} found. "
    text = " ".join(e["message"] for e in errors[:shown])
    if error_count > shown:
        text += f" (and {error_count - shown} more)"
    return head + text


def detect_format(example: dict[str, Any]) -> str | None:
    if "messages" in example:
        return REINFORCEMENT if _ends_before_the_answer(example) else CHAT
    if "input" in example or "preferred_output" in example or "non_preferred_output" in example:
        return PREFERENCE
    if "prompt" in example or "completion" in example:
        return PROMPT_COMPLETION
    return None


def _ends_before_the_answer(example: dict[str, Any]) -> bool:
    """Reinforcement data: messages that end with a turn other than the assistant's, and fields beyond chat's
    or no assistant turn to train on (a chat example that merely ends with a user turn stays chat)."""
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return False
    if messages[-1].get("role") == "assistant":
        return False
    trainable = any(isinstance(m, dict) and m.get("role") == "assistant" and m.get("weight", 1) == 1 for m in messages)
    return bool(set(example) - CHAT_KEYS) or not trainable


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "null")


# --------------------------------------------------------------------------------------- format checks
def _unknown_keys(example: dict[str, Any], allowed: set[str]) -> str | None:
    unknown = sorted(set(example) - allowed)
    if not unknown:
        return None
    return (f"unrecognized key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)} "
            f"(allowed: {', '.join(sorted(allowed))}).")


def _check_keys(example: dict[str, Any], allowed: set[str]) -> None:
    message = _unknown_keys(example, allowed)
    if message:
        raise ExampleError("unrecognized_key", message)


def _check_text_content(content: Any, where: str) -> str:
    """Content is a non-empty string or a non-empty list of text parts; returns the text."""
    if isinstance(content, str):
        if not content.strip():
            raise ExampleError("missing_content", f"{where} has empty content.")
        return content
    if isinstance(content, list) and content:
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else _json_type(part)
                raise ExampleError("invalid_content",
                                   f"{where} has a content part of type {kind!r}; only text parts are supported.")
            texts.append(part["text"])
        if not "".join(texts).strip():
            raise ExampleError("missing_content", f"{where} has empty content.")
        return "".join(texts)
    if content is None:
        raise ExampleError("missing_content", f"{where} has no content.")
    raise ExampleError("invalid_content", f"{where} content must be a string or a list of text parts.")


def _check_tool_calls(tool_calls: Any, where: str) -> None:
    if not isinstance(tool_calls, list) or not tool_calls:
        raise ExampleError("invalid_tool_calls", f"{where} 'tool_calls' must be a non-empty list.")
    for call in tool_calls:
        function = call.get("function") if isinstance(call, dict) else None
        if (not isinstance(function, dict) or not isinstance(function.get("name"), str)
                or not isinstance(function.get("arguments"), str) or call.get("type", "function") != "function"):
            raise ExampleError("invalid_tool_calls", f"{where} has a tool call that is not "
                               '{"id": ..., "type": "function", "function": {"name": str, "arguments": str}}.')


def check_messages(messages: Any, *, where: str = "'messages'", need_assistant: bool = True) -> None:
    if not isinstance(messages, list) or not messages:
        raise ExampleError("invalid_messages", f"{where} must be a non-empty list of messages.")
    trainable = 0
    for index, message in enumerate(messages, start=1):
        label = f"message {index}"
        if not isinstance(message, dict):
            raise ExampleError("invalid_message", f"{label} is not an object.")
        role = message.get("role")
        if role not in ROLES:
            raise ExampleError("unrecognized_role", f"{label} has role {role!r}; expected one of "
                               f"{', '.join(sorted(ROLES))}.")
        unknown = sorted(set(message) - MESSAGE_KEYS)
        if unknown:
            raise ExampleError("message_unrecognized_key", f"{label} has unrecognized key(s) "
                               f"{', '.join(repr(k) for k in unknown)}.")
        if "weight" in message:
            if role != "assistant":
                raise ExampleError("invalid_weight", f"{label}: 'weight' is only allowed on assistant messages.")
            if message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
                raise ExampleError("invalid_weight", f"{label} has weight {message['weight']!r}; it must be 0 or 1.")
        if role == "assistant" and (message.get("tool_calls") is not None or message.get("function_call") is not None):
            if message.get("tool_calls") is not None:
                _check_tool_calls(message["tool_calls"], label)
            if message.get("content") not in (None, ""):
                _check_text_content(message["content"], label)
        else:
            _check_text_content(message.get("content"), f"{label} ({role})")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise ExampleError("missing_tool_call_id", f"{label} is a tool result without a 'tool_call_id'.")
        if role == "assistant" and message.get("weight", 1) == 1:
            trainable += 1
    if need_assistant and trainable == 0:
        raise ExampleError("example_missing_assistant_message",
                           "no assistant message to train on (every example needs one with weight 1).")


def _check_tools(tools: Any) -> None:
    if not isinstance(tools, list):
        raise ExampleError("invalid_tools", "'tools' must be a list.")
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or tool.get("type") != "function":
            raise ExampleError("invalid_tools", 'each tool must be {"type": "function", "function": {"name": str, ...}}.')
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise ExampleError("invalid_tools", f"tool {function['name']!r} has 'parameters' that is not an object.")


def check_chat(example: dict[str, Any]) -> None:
    _check_keys(example, CHAT_KEYS)
    check_messages(example["messages"])
    if "tools" in example:
        _check_tools(example["tools"])
    if "parallel_tool_calls" in example and not isinstance(example["parallel_tool_calls"], bool):
        raise ExampleError("unrecognized_key", "'parallel_tool_calls' must be true or false.")


def _check_single_output(value: Any, key: str) -> None:
    code = f"invalid_{key}"
    if not isinstance(value, list) or len(value) != 1:
        raise ExampleError(code, f"'{key}' must be a list with exactly one assistant message.")
    message = value[0]
    if not isinstance(message, dict) or message.get("role") != "assistant":
        raise ExampleError(code, f"'{key}' must hold an assistant message.")
    _check_text_content(message.get("content"), f"'{key}'")


def check_preference(example: dict[str, Any]) -> None:
    _check_keys(example, PREFERENCE_KEYS)
    source = example.get("input")
    if not isinstance(source, dict) or "messages" not in source:
        raise ExampleError("invalid_input", "'input' must be an object with 'messages'.")
    _check_keys(source, CHAT_KEYS)
    check_messages(source["messages"], where="'input.messages'", need_assistant=False)
    if "tools" in source:
        _check_tools(source["tools"])
    for key in ("preferred_output", "non_preferred_output"):
        if key not in example:
            raise ExampleError(f"invalid_{key}", f"missing '{key}'.")
        _check_single_output(example[key], key)


def check_prompt_completion(example: dict[str, Any]) -> None:
    _check_keys(example, PROMPT_COMPLETION_KEYS)
    for key in ("prompt", "completion"):
        value = example.get(key)
        if not isinstance(value, str) or (key == "completion" and not value.strip()):
            raise ExampleError(f"invalid_{key}", f"'{key}' must be a {'non-empty ' if key == 'completion' else ''}string.")


def check_reinforcement(example: dict[str, Any]) -> None:
    """Messages that end before the answer (any roles before it), chat's optional tool fields; every other
    field is the grader's item data, any JSON value."""
    check_messages(example["messages"], need_assistant=False)
    if "tools" in example:
        _check_tools(example["tools"])
    if "parallel_tool_calls" in example and not isinstance(example["parallel_tool_calls"], bool):
        raise ExampleError("unrecognized_key", "'parallel_tool_calls' must be true or false.")


CHECKS = {CHAT: check_chat, PREFERENCE: check_preference, PROMPT_COMPLETION: check_prompt_completion,
          REINFORCEMENT: check_reinforcement}
