"""Cursor pagination on time-ordered ids (see db.ids): `after` is the last id of the previous page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T")


@dataclass(frozen=True)
class Cursor:
    """One page of a list: the rows strictly after `after` in the list's order, at most `limit` of them."""

    after: str | int | None = None
    limit: int = 20
    newest_first: bool = True


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool


def fetch_page(session: Session, stmt: Select[T], id_column: InstrumentedAttribute[Any], cursor: Cursor) -> Page[T]:
    """Run `stmt` ordered by id, strictly after the cursor, and report whether more rows follow."""
    if cursor.after is not None:
        stmt = stmt.where(id_column < cursor.after if cursor.newest_first else id_column > cursor.after)
    stmt = stmt.order_by(id_column.desc() if cursor.newest_first else id_column.asc()).limit(cursor.limit + 1)
    rows = list(session.scalars(stmt))
    return Page(items=rows[:cursor.limit], has_more=len(rows) > cursor.limit)
