"""Fine-tuning job events (the `list_events` stream), newest first."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import ids
from db.pagination import Cursor, Page, fetch_page
from db.tables import JobEvent


def add(session: Session, *, job_id: str, project_id: str, message: str, level: str = "info",
        type: str = "message", data: dict[str, Any] | None = None) -> JobEvent:
    event = JobEvent(
        id=ids.new_id(ids.EVENT),
        job_id=job_id,
        project_id=project_id,
        created_at=int(time.time()),
        level=level,
        message=message,
        type=type,
        data=data,
    )
    session.add(event)
    return event


def list_page(session: Session, project_id: str, job_id: str, cursor: Cursor) -> Page[JobEvent]:
    stmt = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.project_id == project_id)
    return fetch_page(session, stmt, JobEvent.id, cursor)


def metrics_rows(session: Session, job_id: str) -> list[dict[str, Any]]:
    """The `data` of every metrics event of a job, oldest first (for the results file)."""
    stmt = (
        select(JobEvent.data)
        .where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
        .order_by(JobEvent.id)
    )
    return [row for row in session.scalars(stmt) if row]
