"""JSON Lines reading shared by suite files, spec sources and response files: errors name the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from contracts.errors import InvalidRequest


def json_lines(text: str, *, code: str, where: str = "", objects_only: bool = True) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line (numbers are 1-based, as editors show them).

    A line that is not JSON, or (with `objects_only`) not a JSON object, raises `InvalidRequest` with
    `code` whose message and `param` name the line, prefixed by `where` when given.
    """
    # Lines end at "\n" only: str.splitlines() would also split inside a JSON string holding U+2028 or
    # other Unicode line separators, which JSON (and our own dumps) leave unescaped.
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        at = f"{where}: line {number}" if where else f"line {number}"
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{at}: not valid JSON ({exc.msg})", code=code, param=at) from None
        if objects_only and not isinstance(value, dict):
            raise InvalidRequest(f"{at}: each line must be a JSON object", code=code, param=at)
        yield number, value


def decode_text(data: bytes, *, code: str, where: str = "") -> str:
    """UTF-8 text (a byte-order mark is dropped); other bytes raise `InvalidRequest` naming the line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        at = f"{where}: line {line}" if where else f"line {line}"
        raise InvalidRequest(f"{at}: not UTF-8 text (byte {exc.start})", code=code, param=at) from None
