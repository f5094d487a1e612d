"""Transactional outbox: task messages written with the state change they announce.

A service adds a message in the same transaction as, say, a new job row; the relay (worker.maintenance)
publishes committed messages to the broker and marks them. Publishing is at-least-once (a crash between
publish and mark re-publishes), which is safe because every task is idempotent and checks the database
before acting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from db.base import affected_rows
from db.tables import OutboxMessage


@dataclass(frozen=True)
class TaskRoute:
    """A task the outbox can announce: its Celery name and the queue that runs it."""

    name: str
    queue: str


#: The producer/consumer contract between the API (and reaper) and the workers.
VALIDATE_FILE = TaskRoute("ftaas.validate_file", "default")
ADVANCE_JOB = TaskRoute("ftaas.advance_job", "default")
RUN_JOB = TaskRoute("ftaas.run_fine_tuning_job", "gpu")
RUN_EVAL = TaskRoute("ftaas.run_knowledge_eval", "gpu")
RUN_ADAPTER_OPERATION = TaskRoute("ftaas.run_adapter_operation", "gpu")
HOLD_TRAINING_MODEL = TaskRoute("ftaas.hold_training_model", "gpu")
ALL_ROUTES = (VALIDATE_FILE, ADVANCE_JOB, RUN_JOB, RUN_EVAL, RUN_ADAPTER_OPERATION, HOLD_TRAINING_MODEL)


@dataclass(frozen=True)
class TaskMessage:
    id: int
    task: str
    args: list[Any]
    queue: str


def add(session: Session, route: TaskRoute, *args: Any) -> None:
    """Announce `route(*args)`; it is published once the surrounding transaction commits."""
    session.add(OutboxMessage(task=route.name, args=list(args), queue=route.queue, created_at=time.time()))


def unpublished(session: Session, limit: int = 100) -> list[TaskMessage]:
    """Unpublished messages, oldest first, without locking them."""
    stmt = select(OutboxMessage).where(OutboxMessage.published_at.is_(None)).order_by(OutboxMessage.id).limit(limit)
    return [TaskMessage(m.id, m.task, list(m.args), m.queue) for m in session.scalars(stmt)]


def claim_unpublished(session: Session, limit: int = 100) -> list[TaskMessage]:
    """Unpublished messages, oldest first, locked for this transaction where the database can.

    On PostgreSQL, `FOR UPDATE SKIP LOCKED` lets several relays run without publishing the same rows at
    the same time. On SQLite the caller's write transaction (BEGIN IMMEDIATE) already serialises relays.
    """
    stmt = select(OutboxMessage).where(OutboxMessage.published_at.is_(None)).order_by(OutboxMessage.id)
    stmt = stmt.limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return [TaskMessage(m.id, m.task, list(m.args), m.queue) for m in session.scalars(stmt)]


def mark_published(session: Session, message_ids: list[int]) -> None:
    if message_ids:
        session.execute(
            update(OutboxMessage).where(OutboxMessage.id.in_(message_ids)).values(published_at=time.time())
        )


def record_failure(session: Session, message_id: int, error: str) -> None:
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == message_id)
        .values(publish_attempts=OutboxMessage.publish_attempts + 1, last_error=error[:2000])
    )


def purge_published(session: Session, older_than: float) -> int:
    """Delete messages published before `older_than` (they are history only)."""
    result = session.execute(
        delete(OutboxMessage).where(OutboxMessage.published_at.is_not(None), OutboxMessage.published_at < older_than)
    )
    return affected_rows(result) or 0
