"""JSON Lines reading shared by suite files, spec sources and response files: errors name the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ftaas.errors import InvalidRequest


def json_lines(text: str, *, code: str, where: str = "", objects_only: bool = True) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line (numbers are 1-based, as editors show them).

    A line that is not JSON, or (with `objects_only`) not a JSON object, raises `InvalidRequest` with
    `code` whose message and `param` name the line, prefixed by `where` when given.
    """
    for number, raw in enumerate(text.splitlines(), start=1):
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
