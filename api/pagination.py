"""List envelopes and cursor checks shared by every paginated route (docs/architecture.md, "Wire contract")."""

from __future__ import annotations

from contracts.errors import InvalidRequest
from db.ids import has_shape


def check_limit(limit: int, *, maximum: int) -> int:
    if not 1 <= limit <= maximum:
        raise InvalidRequest(f"limit must be between 1 and {maximum}", param="limit")
    return limit


def check_cursor(after: str | None, prefix: str) -> str | None:
    """`after` must look like an id of the listed kind (it need not exist any more)."""
    if after is not None and not has_shape(after, prefix):
        raise InvalidRequest(f"after must be an id returned by this list (starting with {prefix!r})", param="after")
    return after
