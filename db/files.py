"""Uploaded files: project-scoped lookups, listing, validation outcome, and the validation dispatch."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from contracts.files.validation import ValidationOutcome
from db import outbox
from db.base import affected_rows
from db.pagination import Cursor, Page, fetch_page
from db.states import FileStatus
from db.tables import File

#: Purposes whose uploads are validated as training data before use.
VALIDATED_PURPOSES = frozenset({"fine-tune"})


def insert(session: Session, file: File) -> File:
    """Register a stored object. Fine-tune uploads start `uploaded` and get a validation task."""
    session.add(file)
    if file.status == FileStatus.UPLOADED:
        file.dispatched_at = time.time()
        outbox.add(session, outbox.VALIDATE_FILE, file.id)
    session.flush()
    return file


def _not_expired(now: float | None = None) -> Any:
    return or_(File.expires_at.is_(None), File.expires_at > int(time.time() if now is None else now))


def get(session: Session, project_id: str, file_id: str, *, include_expired: bool = False) -> File | None:
    """The file, if it belongs to the project and has not expired. Workers pass `include_expired`: a file
    an unfinished job reads is kept past its expiry until the job ends (see `take_expired`)."""
    stmt = select(File).where(File.id == file_id, File.project_id == project_id)
    if not include_expired:
        stmt = stmt.where(_not_expired())
    return session.scalar(stmt)


def get_any_project(session: Session, file_id: str) -> File | None:
    """For workers, which act on ids they were handed by the database itself."""
    return session.get(File, file_id)


def list_page(session: Session, project_id: str, cursor: Cursor, *, purpose: str | None) -> Page[File]:
    stmt = select(File).where(File.project_id == project_id, _not_expired())
    if purpose is not None:
        stmt = stmt.where(File.purpose == purpose)
    return fetch_page(session, stmt, File.id, cursor)


def delete(session: Session, file: File) -> None:
    session.delete(file)


def record_validation(session: Session, file_id: str, outcome: ValidationOutcome, *,
                      token_counts: dict[str, Any] | None = None) -> bool:
    """Store the outcome (and a valid file's token counts) on a file still `uploaded`. False if it was already
    decided (a duplicate run)."""
    result = session.execute(
        update(File)
        .where(File.id == file_id, File.status == FileStatus.UPLOADED)
        .values(
            status=FileStatus.PROCESSED if outcome.ok else FileStatus.ERROR,
            status_details=outcome.summary,
            data_format=outcome.data_format,
            example_count=outcome.example_count,
            validation_errors=outcome.errors or None,
            error_count=outcome.error_count,
            item_fields=outcome.item_fields or None,
            token_counts=token_counts,
        )
    )
    return affected_rows(result) == 1


def take_expired(session: Session, *, now: float | None = None, limit: int = 100) -> list[str]:
    """Delete the rows of expired files that no unfinished job reads; returns their storage keys, to be
    deleted from the store after commit. Files still in use expire once their jobs finish."""
    from db import jobs

    now = time.time() if now is None else now
    expired = session.scalars(
        select(File).where(File.expires_at.is_not(None), File.expires_at <= int(now)).order_by(File.expires_at).limit(limit))
    keys = []
    for row in list(expired):
        if jobs.file_in_use(session, row.id) is None:
            keys.append(row.storage_key)
            session.delete(row)
    return keys


def redispatch_stale(session: Session, *, older_than: float, limit: int = 100) -> list[str]:
    """Re-announce validation for uploads whose task has not run for a long time (lost message)."""
    stale = list(
        session.scalars(
            select(File.id)
            .where(File.status == FileStatus.UPLOADED, File.dispatched_at < older_than)
            .limit(limit)
        )
    )
    now = time.time()
    for file_id in stale:
        session.execute(update(File).where(File.id == file_id).values(dispatched_at=now))
        outbox.add(session, outbox.VALIDATE_FILE, file_id)
    return stale


def content_reader(db: Any, store: Any, project_id: str, *, include_expired: bool = False
                   ) -> Callable[[str], bytes | None]:
    """`read(file_id)`: a file of the project, its bytes verified against the recorded SHA-256; None when the
    project has no such file. `db` is a `db.session.Database`, `store` an artifact store (`get_bytes`)."""

    def read(file_id: str) -> bytes | None:
        with db.read() as session:
            row = get(session, project_id, file_id, include_expired=include_expired)
        return None if row is None else store.get_bytes(row.storage_key, sha256=row.sha256)

    return read
