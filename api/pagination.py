"""OpenAI-style cursor lists, written once for every list route (docs/architecture.md, "Wire contract").

A route declares its query with `cursor_query` (`after`, `limit` and, where the route offers it, `order`,
each checked: a bad one is a 400 naming it) and answers with `list_page`, which fetches one page in the
caller's project and sends the envelope `{"object": "list", "data", "has_more", "first_id", "last_id"}`:

    @router.get("", response_model=FineTuningJobList)
    async def list_jobs(services: Services, caller: CurrentCaller, cursor: JobCursor) -> Response:
        return await list_page(caller, lambda principal: services.jobs.list(principal, cursor),
                               FineTuningJobObject.of)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Protocol, TypeVar

from fastapi import Response

from api.dependencies import Caller
from api.responses import list_response
from contracts.errors import InvalidRequest
from db.ids import has_shape
from db.pagination import Cursor, Page
from db.projects import Principal

Row = TypeVar("Row")
Order = Literal["asc", "desc"]


class Listed(Protocol):
    """A wire object a list holds: it has an id and serialises itself (every pydantic wire model does)."""

    @property
    def id(self) -> str: ...

    def model_dump_json(self) -> str: ...


def check_limit(limit: int, *, maximum: int) -> int:
    if not 1 <= limit <= maximum:
        raise InvalidRequest(f"limit must be between 1 and {maximum}", param="limit")
    return limit


def check_cursor(after: str | None, prefix: str) -> str | None:
    """`after` must look like an id of the listed kind (it need not exist any more)."""
    if after is not None and not has_shape(after, prefix):
        raise InvalidRequest(f"after must be an id returned by this list (starting with {prefix!r})", param="after")
    return after


def cursor_query(prefix: str | None, *, default_limit: int = 20, maximum: int = 100,
                 order: Order | None = None) -> Callable[..., Cursor]:
    """A FastAPI dependency reading a list's query into a `Cursor`. `prefix`: the listed ids' prefix (None:
    integer ids); `order`: the default direction where the route lets the caller choose it, None where the
    list is always newest first."""

    def after_of(after: str | None) -> str | int | None:
        if prefix is not None:
            return check_cursor(after, prefix)
        if after is not None and not (after.isascii() and after.isdigit() and len(after) <= 18):
            raise InvalidRequest("after must be an id returned by this list", param="after")
        return int(after) if after is not None else None

    if order is None:
        def fixed(after: str | None = None, limit: int = default_limit) -> Cursor:
            return Cursor(after_of(after), check_limit(limit, maximum=maximum), newest_first=True)

        return fixed

    def ordered(after: str | None = None, limit: int = default_limit, order: Order = order) -> Cursor:
        return Cursor(after_of(after), check_limit(limit, maximum=maximum), newest_first=order == "desc")

    return ordered


async def list_page(caller: Caller, fetch: Callable[[Principal], Page[Row]], render: Callable[[Row], Listed]) -> Response:
    """Authenticate, fetch one page in the caller's project (one thread-pool hop), answer with the envelope."""

    def work(principal: Principal) -> Response:
        page = fetch(principal)
        return list_response([render(row) for row in page.items], has_more=page.has_more)

    return await caller.run(work)


_METADATA_PARAM = re.compile(r"^metadata\[(.+)\]$")


def metadata_filter(query: Iterable[tuple[str, str]], *, others: set[str] | None = None) -> dict[str, str]:
    """The `metadata[<key>]=<value>` pairs of a list's query (OpenAI's filter; every pair must hold). Another
    parameter named `metadata...` is a 400; so is any parameter not in `others`, where the route names its
    other parameters (nothing a client sends is ignored)."""
    metadata: dict[str, str] = {}
    for name, value in query:
        if match := _METADATA_PARAM.match(name):
            metadata[match.group(1)] = value
        elif name.startswith("metadata"):
            raise InvalidRequest("Filter on metadata as metadata[key]=value.", param=name)
        elif others is not None and name not in others:
            raise InvalidRequest(f"Unknown query parameter '{name}'; this list takes metadata[<key>] and "
                                 f"{', '.join(sorted(others))}.", param=name)
    return metadata


def static_list(items: Sequence[Any]) -> Response:
    """The envelope of a list that is not paged (every item at once: the built-in suites). `/v1/models` keeps
    OpenAI's own models-list shape, which has no cursor fields."""
    return list_response(items, has_more=False)
