"""Stored chat completions of a project (OpenAI's `store: true`), their metadata, and their retention.

Every query filters on the project: another project's completion is never found, listed, changed or deleted.
Lists order and paginate on the id, which is time-ordered (db.ids) and is the completion's own id.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, delete, exists, select
from sqlalchemy.orm import Session

from db.pagination import Cursor, Page, fetch_page
from db.tables import StoredCompletion, StoredCompletionMetadata


@dataclass(frozen=True)
class CompletionFilter:
    """Which stored completions: all of these that are given must hold (metadata: every pair)."""

    model: str | None = None
    metadata: dict[str, str] | None = None
    #: Unix seconds, inclusive bounds
    created_after: int | None = None
    created_before: int | None = None


def store(session: Session, project_id: str, *, completion_id: str, model: str, created_at: int,
          metadata: dict[str, str] | None, request: dict[str, Any], response: dict[str, Any]) -> StoredCompletion:
    row = StoredCompletion(id=completion_id, project_id=project_id, model=model, created_at=created_at,
                           user_metadata=metadata or None, request=request, response=response)
    session.add(row)
    session.flush()
    _put_metadata(session, completion_id, metadata or {})
    return row


def get(session: Session, project_id: str, completion_id: str) -> StoredCompletion | None:
    return session.scalar(select(StoredCompletion).where(StoredCompletion.id == completion_id,
                                                         StoredCompletion.project_id == project_id))


def list_page(session: Session, project_id: str, where: CompletionFilter, cursor: Cursor) -> Page[StoredCompletion]:
    return fetch_page(session, _selected(project_id, where), StoredCompletion.id, cursor)


def matching(session: Session, project_id: str, where: CompletionFilter, *, batch: int = 200
             ) -> Iterator[StoredCompletion]:
    """Every completion matching `where`, oldest first, read `batch` rows at a time."""
    after: str | None = None
    while True:
        page = fetch_page(session, _selected(project_id, where), StoredCompletion.id,
                          Cursor(after=after, limit=batch, newest_first=False))
        yield from page.items
        if not page.has_more or not page.items:
            return
        after = page.items[-1].id


def set_metadata(session: Session, row: StoredCompletion, metadata: dict[str, str] | None) -> None:
    """Replace the completion's metadata (None or {}: none), as OpenAI's update does."""
    row.user_metadata = metadata or None
    session.execute(delete(StoredCompletionMetadata).where(StoredCompletionMetadata.completion_id == row.id))
    _put_metadata(session, row.id, metadata or {})


def remove(session: Session, row: StoredCompletion) -> None:
    session.execute(delete(StoredCompletionMetadata).where(StoredCompletionMetadata.completion_id == row.id))
    session.delete(row)


def delete_older_than(session: Session, seconds: int, *, now: float | None = None, batch: int = 500) -> int:
    """Retention: delete up to `batch` completions created more than `seconds` ago (any project); returns
    how many (call again while it returns `batch`)."""
    cutoff = int((time.time() if now is None else now) - seconds)
    doomed = list(session.scalars(select(StoredCompletion.id).where(StoredCompletion.created_at < cutoff)
                                  .order_by(StoredCompletion.created_at).limit(batch)))
    if doomed:
        session.execute(delete(StoredCompletionMetadata).where(StoredCompletionMetadata.completion_id.in_(doomed)))
        session.execute(delete(StoredCompletion).where(StoredCompletion.id.in_(doomed))
                        .execution_options(synchronize_session=False))
    return len(doomed)


def _put_metadata(session: Session, completion_id: str, metadata: dict[str, str]) -> None:
    for key, value in metadata.items():
        session.add(StoredCompletionMetadata(completion_id=completion_id, key=key, value=value))


def _selected(project_id: str, where: CompletionFilter) -> Select[StoredCompletion]:
    stmt = select(StoredCompletion).where(StoredCompletion.project_id == project_id)
    if where.model is not None:
        stmt = stmt.where(StoredCompletion.model == where.model)
    if where.created_after is not None:
        stmt = stmt.where(StoredCompletion.created_at >= where.created_after)
    if where.created_before is not None:
        stmt = stmt.where(StoredCompletion.created_at <= where.created_before)
    for key, value in (where.metadata or {}).items():
        stmt = stmt.where(exists().where(StoredCompletionMetadata.completion_id == StoredCompletion.id,
                                         StoredCompletionMetadata.key == key, StoredCompletionMetadata.value == value))
    return stmt
