"""Cursor pagination on time-ordered ids (see db.ids): `after` is the last id of the previous page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool


def fetch_page(
    session: Session,
    stmt: Select,
    id_column: InstrumentedAttribute,
    *,
    after: str | None,
    limit: int,
    newest_first: bool = True,
) -> Page:
    """Run `stmt` ordered by id, strictly after the cursor, and report whether more rows follow."""
    if after is not None:
        stmt = stmt.where(id_column < after if newest_first else id_column > after)
    stmt = stmt.order_by(id_column.desc() if newest_first else id_column.asc()).limit(limit + 1)
    rows = list(session.scalars(stmt))
    return Page(items=rows[:limit], has_more=len(rows) > limit)
