"""The small state machine of standalone work a worker claims (knowledge evals, adapter operations):

    queued -> running -> succeeded | failed | cancelled;  running -> queued (worker lost or shutting down)

As with fine-tuning jobs (db.jobs), every change is one conditional UPDATE, and a worker's writes carry
the fencing token of its claim: once the work was cancelled, reaped or re-claimed, a stale worker's writes
match nothing and it gets `LeaseLost`. The wake-up message goes out through the outbox in the same
transaction as the state it announces. `LeasedQueue` holds the table, its task route and which rows are
standalone (knowledge evals attached to a job are run under the job's lease instead).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, select, true, update
from sqlalchemy.orm import Session

from db import outbox
from db.pagination import Page, fetch_page
from db.states import WorkStatus
from ftaas.errors import IllegalTransition, LeaseLost

S = WorkStatus
CLEAR_LEASE = {"lease_owner": None, "lease_expires_at": None}
Row = TypeVar("Row")


@dataclass(frozen=True)
class WorkLease:
    """A worker's claim on a piece of work. `token` fences every write it makes."""

    work_id: str
    project_id: str
    owner: str
    token: int
    attempt: int


class LeasedQueue(Generic[Row]):
    def __init__(self, table: Any, route: outbox.TaskRoute, *, noun: str, param: str,
                 standalone: ColumnElement[bool] | None = None) -> None:
        self.table = table
        self.route = route
        self.noun = noun  # "knowledge eval", in messages
        self.param = param  # the path parameter that names one, in errors
        self.standalone = standalone if standalone is not None else true()

    # ----------------------------------------------------------------------------------- rows
    def insert(self, session: Session, row: Row, *, dispatch: bool) -> None:
        """A new row; `dispatch` announces it to the workers in the same transaction."""
        row.dispatched_at = time.time()  # type: ignore[attr-defined]
        session.add(row)
        session.flush()
        if dispatch:
            outbox.add(session, self.route, row.id)  # type: ignore[attr-defined]

    def get(self, session: Session, project_id: str, work_id: str) -> Row | None:
        t = self.table
        return session.scalar(select(t).where(t.id == work_id, t.project_id == project_id))

    def get_any_project(self, session: Session, work_id: str) -> Row | None:
        return session.get(self.table, work_id, populate_existing=True)

    def list_page(self, session: Session, project_id: str, *, after: str | None, limit: int) -> Page[Row]:
        return fetch_page(session, select(self.table).where(self.table.project_id == project_id), self.table.id,
                          after=after, limit=limit)

    def update(self, session: Session, work_id: str, *, sources: set[str], token: int | None = None,
               values: dict[str, Any]) -> bool:
        t = self.table
        stmt = update(t).where(t.id == work_id, t.status.in_(sorted(sources)))
        if token is not None:
            stmt = stmt.where(t.fencing_token == token)
        return session.execute(stmt.values(**values).execution_options(synchronize_session=False)).rowcount == 1

    # ------------------------------------------------------------------------------ transitions
    def cancel(self, session: Session, row: Row) -> Row:
        """queued or running -> cancelled (a running worker stops at its next fenced write). Idempotent."""
        work_id = row.id  # type: ignore[attr-defined]
        if self.update(session, work_id, sources={S.QUEUED, S.RUNNING},
                       values={"status": S.CANCELLED.value, "finished_at": int(time.time()), **CLEAR_LEASE}):
            return self.get_any_project(session, work_id)  # type: ignore[return-value]
        current = self.get_any_project(session, work_id)
        if current.status == S.CANCELLED:  # type: ignore[union-attr]
            return current  # type: ignore[return-value]
        raise IllegalTransition(f"cannot cancel a {self.noun} that has {current.status}",  # type: ignore[union-attr]
                                param=self.param)

    def claim(self, session: Session, work_id: str, *, owner: str, ttl: float,
              values: dict[str, Any] | None = None) -> WorkLease | None:
        """queued -> running for exactly one caller."""
        t = self.table
        now = time.time()
        standalone = session.scalar(select(t.id).where(t.id == work_id, self.standalone))
        if standalone is None:
            return None
        ok = self.update(session, work_id, sources={S.QUEUED}, values={
            "status": S.RUNNING.value, "lease_owner": owner, "lease_expires_at": now + ttl,
            "fencing_token": t.fencing_token + 1, "attempt": t.attempt + 1, "started_at": int(now),
            **(values or {})})
        if not ok:
            return None
        row = self.get_any_project(session, work_id)
        return WorkLease(row.id, row.project_id, owner, row.fencing_token, row.attempt)  # type: ignore[union-attr]

    def heartbeat(self, session: Session, lease: WorkLease, *, ttl: float, values: dict[str, Any] | None = None) -> None:
        if not self.update(session, lease.work_id, sources={S.RUNNING}, token=lease.token,
                           values={"lease_expires_at": time.time() + ttl, **(values or {})}):
            raise LeaseLost(f"{self.noun} {lease.work_id} is no longer held by token {lease.token}")

    def complete(self, session: Session, lease: WorkLease, values: dict[str, Any]) -> None:
        if not self.update(session, lease.work_id, sources={S.RUNNING}, token=lease.token, values={
                "status": S.SUCCEEDED.value, "finished_at": int(time.time()), **CLEAR_LEASE, **values}):
            raise LeaseLost(f"{self.noun} {lease.work_id} left running before it could complete")

    def fail(self, session: Session, lease: WorkLease, error: dict[str, Any]) -> None:
        if not self.update(session, lease.work_id, sources={S.RUNNING}, token=lease.token, values={
                "status": S.FAILED.value, "error": error, "finished_at": int(time.time()), **CLEAR_LEASE}):
            raise LeaseLost(f"{self.noun} {lease.work_id} left running before it could fail")

    def release(self, session: Session, lease: WorkLease, *, counts_as_attempt: bool) -> None:
        """running -> queued, so that another worker starts it over."""
        values: dict[str, Any] = {"status": S.QUEUED.value, "dispatched_at": time.time(), **CLEAR_LEASE}
        if not counts_as_attempt:
            values["attempt"] = self.table.attempt - 1
        if not self.update(session, lease.work_id, sources={S.RUNNING}, token=lease.token, values=values):
            raise LeaseLost(f"{self.noun} {lease.work_id} left running before it could be released")
        outbox.add(session, self.route, lease.work_id)

    # ------------------------------------------------------------------------------------ reaper
    def reap_expired_leases(self, session: Session, *, now: float | None = None, limit: int = 100) -> list[str]:
        """Running work whose worker stopped renewing its lease: re-queue, or fail after max attempts."""
        t = self.table
        now = time.time() if now is None else now
        expired = list(session.scalars(select(t).where(t.status == S.RUNNING, self.standalone,
                                                       t.lease_expires_at < now).limit(limit)))
        reaped = []
        for row in expired:
            if row.attempt < row.max_attempts:
                values: dict[str, Any] = {"status": S.QUEUED.value, "dispatched_at": now, **CLEAR_LEASE}
            else:
                values = {"status": S.FAILED.value, "finished_at": int(now), **CLEAR_LEASE,
                          "error": {"code": "worker_lost", "param": None, "message": f"The worker running this "
                                    f"{self.noun} was lost {row.attempt} times; giving up."}}
            if self.update(session, row.id, sources={S.RUNNING}, token=row.fencing_token, values=values):
                if values["status"] == S.QUEUED.value:
                    outbox.add(session, self.route, row.id)
                reaped.append(row.id)
        return reaped

    def redispatch_stale(self, session: Session, *, older_than: float, limit: int = 100) -> list[str]:
        """Re-announce queued work whose wake-up message seems lost (duplicates are harmless)."""
        t = self.table
        stale = list(session.scalars(select(t).where(t.status == S.QUEUED, self.standalone,
                                                     t.dispatched_at < older_than).limit(limit)))
        for row in stale:
            session.execute(update(t).where(t.id == row.id).values(dispatched_at=time.time()))
            outbox.add(session, self.route, row.id)
        return [row.id for row in stale]
