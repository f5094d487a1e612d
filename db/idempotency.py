"""`Idempotency-Key` bookkeeping: one created object per (project, key), bound to a hash of the request."""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.tables import IdempotencyKey


def lookup(session: Session, project_id: str, key: str) -> IdempotencyKey | None:
    return session.scalar(
        select(IdempotencyKey).where(IdempotencyKey.project_id == project_id, IdempotencyKey.key == key)
    )


def remember(session: Session, *, project_id: str, key: str, request_hash: str, resource_id: str) -> None:
    """Insert the key. A concurrent request with the same key makes the commit fail on the primary key,
    which rolls back that request's object too; the caller then replays the winner (see api service)."""
    session.add(IdempotencyKey(project_id=project_id, key=key, request_hash=request_hash,
                               resource_id=resource_id, created_at=int(time.time())))
    session.flush()
