"""Grader templates: `{{item.<path>}}` and `{{sample.<path>}}` inside a grader's strings.

A path is dotted names and list indexes (`{{item.answers[0].text}}`); spaces inside the braces are allowed.
The sample namespace has `output_text` (the model's reply), `output_json` (the reply parsed, when it is JSON)
and `output_tools` (its tool calls). A value that is not a string is inserted as compact JSON.

`parse` raises `TemplateSyntaxError` with the character position for an unbalanced `{{`, an unknown namespace
or a malformed path; `Template.references` lists the item fields a grader needs, so a dataset line that lacks
one is refused before a job starts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NAMESPACES = ("item", "sample")
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools")
_PATH = re.compile(r"^(?P<namespace>[A-Za-z_]\w*)(?P<rest>(?:\.[A-Za-z_]\w*|\[\d+\])*)$")
_STEP = re.compile(r"\.([A-Za-z_]\w*)|\[(\d+)\]")


class TemplateSyntaxError(ValueError):
    """A template that does not parse; `position` is the offset of the offending `{{`."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


class MissingVariable(KeyError):
    """A path with no value in the namespaces a template is rendered with."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path

    def __str__(self) -> str:
        return f"{{{{{self.path}}}}} has no value"


@dataclass(frozen=True)
class Reference:
    """One `{{namespace.path}}` in a template."""

    namespace: str
    steps: tuple[str | int, ...]
    text: str

    @property
    def item_field(self) -> str | None:
        """The top-level item field it reads, or None for a sample reference."""
        if self.namespace != "item" or not self.steps:
            return None
        first = self.steps[0]
        return first if isinstance(first, str) else None


@dataclass(frozen=True)
class Template:
    parts: tuple[str | Reference, ...]

    @property
    def references(self) -> tuple[Reference, ...]:
        return tuple(part for part in self.parts if isinstance(part, Reference))

    def render(self, namespaces: Mapping[str, Any]) -> str:
        """The text with every reference replaced; raises MissingVariable for a path that has no value."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = lookup(namespaces, part)
            out.append(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                                          separators=(",", ":")))
        return "".join(out)


def lookup(namespaces: Mapping[str, Any], reference: Reference) -> Any:
    """The value `reference` names; raises MissingVariable."""
    value: Any = namespaces.get(reference.namespace)
    if value is None:
        raise MissingVariable(reference.text)
    for step in reference.steps:
        if isinstance(step, int):
            if not isinstance(value, list) or step >= len(value):
                raise MissingVariable(reference.text)
            value = value[step]
        else:
            if not isinstance(value, Mapping) or step not in value:
                raise MissingVariable(reference.text)
            value = value[step]
    if value is None:
        raise MissingVariable(reference.text)
    return value


def parse(text: str) -> Template:
    """`text` split into literal strings and references; raises TemplateSyntaxError."""
    parts: list[str | Reference] = []
    position = 0
    while True:
        start = text.find("{{", position)
        stray = text.find("}}", position)
        if stray != -1 and (start == -1 or stray < start):
            raise TemplateSyntaxError(f"'}}}}' at character {stray} closes no '{{{{'", stray)
        if start == -1:
            if position < len(text):
                parts.append(text[position:])
            return Template(tuple(parts))
        end = text.find("}}", start + 2)
        if end == -1:
            raise TemplateSyntaxError(f"'{{{{' at character {start} is never closed with '}}}}'", start)
        if start > position:
            parts.append(text[position:start])
        parts.append(_reference(text[start + 2:end].strip(), start))
        position = end + 2


def _reference(body: str, position: int) -> Reference:
    match = _PATH.match(body)
    if not match:
        raise TemplateSyntaxError(f"'{{{{{body}}}}}' at character {position} is not a variable path "
                                  "(like item.answer or sample.output_text)", position)
    namespace = match["namespace"]
    if namespace not in NAMESPACES:
        raise TemplateSyntaxError(f"'{{{{{body}}}}}' at character {position}: unknown namespace {namespace!r} "
                                  "(templates read item.* and sample.*)", position)
    steps = tuple(int(index) if index else name for name, index in _STEP.findall(match["rest"]))
    if namespace == "sample":
        if not steps or steps[0] not in SAMPLE_FIELDS:
            raise TemplateSyntaxError(f"'{{{{{body}}}}}' at character {position}: the sample has "
                                      f"{', '.join(SAMPLE_FIELDS)}", position)
        if steps[0] != "output_json" and len(steps) > 1 and steps[0] == "output_text":
            raise TemplateSyntaxError(f"'{{{{{body}}}}}' at character {position}: output_text is a string",
                                      position)
    return Reference(namespace, steps, body)
