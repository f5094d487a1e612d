"""Work a worker claims under a lease: fine-tuning jobs (db.jobs), knowledge evals and adapter operations.

One lease model for all three. A claim moves a row `queued -> running`, bumps its `fencing_token` and
`attempt` and sets `lease_owner`/`lease_expires_at`; the worker renews the lease while it works, and every
write it makes carries the token of its claim: once the work was cancelled, reaped or re-claimed, a stale
worker's writes match nothing and it gets `LeaseLost`. Every status change is one conditional UPDATE
(`WHERE status IN <sources>`), so concurrent actors (API cancel, worker completion, reaper) cannot both
win. A wake-up message goes out through the outbox in the same transaction as the state it announces.

`LeasedQueue` holds one table's queue: its task route, which statuses count as working (jobs add
`pausing`), which rows are standalone (knowledge evals attached to a job run under the job's lease
instead), and the fenced operations. db.jobs adds the job-only states and events on top of it.

Work that ends (succeeded, failed, cancelled: by its worker, a user or the reaper) is announced to the
project's webhook endpoints in the same transaction (db.webhooks), as `<webhook_kind>.<status>`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, select, true, update
from sqlalchemy.orm import Session

from contracts.errors import IllegalTransition, LeaseLost
from contracts.webhooks.events import ENDINGS as ENDED_STATUSES
from db import outbox, webhooks
from db.base import affected_rows
from db.pagination import Cursor, Page, fetch_page
from db.states import WorkStatus
from db.tables import LeasedWork

CLEAR_LEASE: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
ENDINGS = frozenset(ENDED_STATUSES)
QUEUED, RUNNING = WorkStatus.QUEUED.value, WorkStatus.RUNNING.value


@dataclass(frozen=True)
class Lease:
    """A worker's claim on a piece of work. `token` fences every write it makes."""

    work_id: str
    project_id: str
    owner: str
    token: int
    attempt: int


#: A leased table's row (db.tables.LeasedWork: jobs, knowledge evals, adapter operations).
Row = TypeVar("Row", bound=LeasedWork)


@dataclass(frozen=True)
class Reaped(Generic[Row]):
    """A row whose worker stopped renewing its lease, and what became of it."""

    row: Row
    outcome: str  # "requeued" | "failed" | "parked"


def worker_lost(noun: str, attempts: int) -> dict[str, Any]:
    return {"code": "worker_lost", "param": None,
            "message": f"The worker running this {noun} was lost {attempts} times; giving up."}


class LeasedQueue(Generic[Row]):
    def __init__(self, table: type[Row], route: outbox.TaskRoute, *, noun: str, param: str,
                 standalone: ColumnElement[bool] | None = None, working: frozenset[str] = frozenset({RUNNING}),
                 parked: tuple[str, str] | None = None, clear: dict[str, Any] | None = None,
                 webhook_kind: str | None = None) -> None:
        self.table = table
        #: how its webhook event types start (contracts.webhooks.events.WORK_KINDS); None: not announced
        self.webhook_kind = webhook_kind
        self.route = route
        self.noun = noun  # "knowledge eval", in messages
        self.param = param  # the path parameter that names one, in errors
        self.standalone = standalone if standalone is not None else true()
        #: statuses in which a worker holds the lease (and renews it)
        self.working = working
        #: (from, to): a lost worker's row in `from` is parked in `to` instead of re-queued (jobs: pausing)
        self.parked = parked
        #: the columns a lease's end clears
        self.clear = clear if clear is not None else CLEAR_LEASE

    # ----------------------------------------------------------------------------------- rows
    def insert(self, session: Session, row: Row, *, dispatch: bool) -> None:
        """A new row; `dispatch` announces it to the workers in the same transaction."""
        row.dispatched_at = time.time()
        session.add(row)
        session.flush()
        if dispatch:
            outbox.add(session, self.route, row.id)

    def get(self, session: Session, project_id: str, work_id: str) -> Row | None:
        t = self.table
        return session.scalar(select(t).where(t.id == work_id, t.project_id == project_id))

    def get_any_project(self, session: Session, work_id: str) -> Row | None:
        """For workers and the reaper, which act on ids handed to them by the database."""
        return session.get(self.table, work_id, populate_existing=True)

    def reload(self, session: Session, work_id: str) -> Row:
        row = self.get_any_project(session, work_id)
        assert row is not None, work_id
        return row

    def list_page(self, session: Session, project_id: str, cursor: Cursor) -> Page[Row]:
        return fetch_page(session, select(self.table).where(self.table.project_id == project_id), self.table.id,
                          cursor)

    def update(self, session: Session, work_id: str, *, sources: set[str] | frozenset[str], token: int | None = None,
               values: dict[str, Any]) -> bool:
        """One conditional UPDATE: only from `sources`, and only under `token` when one is given."""
        t = self.table
        stmt = update(t).where(t.id == work_id, t.status.in_(sorted(sources)))
        if token is not None:
            stmt = stmt.where(t.fencing_token == token)
        changed = affected_rows(session.execute(stmt.values(**values).execution_options(synchronize_session=False))) == 1
        if changed and values.get("status") in ENDINGS:
            self._announce(session, work_id, values["status"])
        return changed

    def _announce(self, session: Session, work_id: str, status: str) -> None:
        if self.webhook_kind is None:
            return
        project_id = session.scalar(select(self.table.project_id).where(self.table.id == work_id))
        if project_id is not None:
            webhooks.announce(session, project_id, f"{self.webhook_kind}.{status}", {"id": work_id})

    # ------------------------------------------------------------------------------ transitions
    def cancel(self, session: Session, row: Row) -> Row:
        """queued or running -> cancelled (a running worker stops at its next fenced write). Idempotent."""
        work_id = row.id
        if self.update(session, work_id, sources={QUEUED, RUNNING},
                       values={"status": WorkStatus.CANCELLED.value, "finished_at": int(time.time()), **self.clear}):
            return self.reload(session, work_id)
        current = self.reload(session, work_id)
        if current.status == WorkStatus.CANCELLED:
            return current
        raise IllegalTransition(f"cannot cancel a {self.noun} that has {current.status}", param=self.param)

    def claim(self, session: Session, work_id: str, *, owner: str, ttl: float, now: float | None = None,
              values: dict[str, Any] | None = None) -> Lease | None:
        """queued -> running for exactly one caller: its lease, or None (someone else has it, or it is not
        queued, or not standalone). `values` are written too (and may replace the default `started_at`)."""
        t = self.table
        now = time.time() if now is None else now
        if session.scalar(select(t.id).where(t.id == work_id, self.standalone)) is None:
            return None
        ok = self.update(session, work_id, sources={QUEUED}, values={
            "status": RUNNING, "lease_owner": owner, "lease_expires_at": now + ttl,
            "fencing_token": t.fencing_token + 1, "attempt": t.attempt + 1, "started_at": int(now),
            **(values or {})})
        if not ok:
            return None
        row = self.reload(session, work_id)
        return Lease(row.id, row.project_id, owner, row.fencing_token, row.attempt)

    def renew(self, session: Session, lease: Lease, *, ttl: float, now: float | None = None,
              values: dict[str, Any] | None = None) -> str:
        """Extend the lease (and write `values`); returns the current working status. `LeaseLost` otherwise."""
        t = self.table
        now = time.time() if now is None else now
        found = session.execute(
            update(t).where(t.id == lease.work_id, t.fencing_token == lease.token, t.status.in_(sorted(self.working)))
            .values(lease_expires_at=now + ttl, **(values or {})).returning(t.status)
            .execution_options(synchronize_session=False)).first()
        if found is None:
            raise LeaseLost(f"{self.noun} {lease.work_id} is no longer held by token {lease.token}")
        return str(found[0])

    def finish(self, session: Session, lease: Lease, status: str, values: dict[str, Any], *,
               sources: set[str] | frozenset[str] | None = None) -> None:
        """A working row -> `status` (succeeded, failed, parked...), ending the lease. `LeaseLost` otherwise."""
        finished = {"finished_at": int(time.time())} if status in (WorkStatus.SUCCEEDED, WorkStatus.FAILED) else {}
        if not self.update(session, lease.work_id, sources=self.working if sources is None else sources,
                           token=lease.token, values={"status": status, **finished, **self.clear, **values}):
            raise LeaseLost(f"{self.noun} {lease.work_id} left {'/'.join(sorted(self.working))} before it could "
                            f"become {status}")

    def complete(self, session: Session, lease: Lease, values: dict[str, Any]) -> None:
        self.finish(session, lease, WorkStatus.SUCCEEDED.value, values)

    def fail(self, session: Session, lease: Lease, error: dict[str, Any]) -> None:
        self.finish(session, lease, WorkStatus.FAILED.value, {"error": error})

    def release(self, session: Session, lease: Lease, *, counts_as_attempt: bool) -> None:
        """running -> queued, so that another worker starts it over (or resumes it from its checkpoint)."""
        values: dict[str, Any] = {"status": QUEUED, "dispatched_at": time.time(), **self.clear}
        if not counts_as_attempt:
            values["attempt"] = self.table.attempt - 1
        if not self.update(session, lease.work_id, sources={RUNNING}, token=lease.token, values=values):
            raise LeaseLost(f"{self.noun} {lease.work_id} left running before it could be released")
        outbox.add(session, self.route, lease.work_id)

    # ------------------------------------------------------------------------------------ reaper
    def reap_expired_leases(self, session: Session, *, now: float | None = None, limit: int = 100) -> list[Reaped[Row]]:
        """Working rows whose worker stopped renewing its lease: parked (see `parked`), re-queued while
        attempts are left, failed (`worker_lost`) after that."""
        t = self.table
        now = time.time() if now is None else now
        expired = list(session.scalars(
            select(t).where(t.status.in_(sorted(self.working)), self.standalone, t.lease_expires_at < now)
            .order_by(t.lease_expires_at).limit(limit)))
        reaped: list[Reaped[Row]] = []
        for row in expired:
            values: dict[str, Any]
            if self.parked is not None and row.status == self.parked[0]:
                outcome, values = "parked", {"status": self.parked[1]}
            elif row.attempt < row.max_attempts:
                outcome, values = "requeued", {"status": QUEUED, "dispatched_at": now}
            else:
                outcome = "failed"
                values = {"status": WorkStatus.FAILED.value, "finished_at": int(now),
                          "error": worker_lost(self.noun, row.attempt)}
            stmt = (update(t).where(t.id == row.id, t.status == row.status, t.fencing_token == row.fencing_token,
                                    t.lease_expires_at < now)
                    .values(**self.clear, **values).execution_options(synchronize_session=False))
            if affected_rows(session.execute(stmt)) == 1:
                if outcome == "requeued":
                    outbox.add(session, self.route, row.id)
                elif outcome == "failed":
                    self._announce(session, row.id, WorkStatus.FAILED.value)
                reaped.append(Reaped(row, outcome))
        return reaped

    def redispatch_stale(self, session: Session, *, older_than: float, limit: int = 100,
                         statuses: dict[str, outbox.TaskRoute] | None = None) -> list[str]:
        """Re-announce waiting work whose wake-up message seems lost (duplicates are harmless: claiming is
        conditional). `statuses` maps each waiting status to its route (default: queued -> this queue's)."""
        t = self.table
        routes = statuses or {QUEUED: self.route}
        stale = list(session.scalars(select(t).where(t.status.in_(sorted(routes)), self.standalone,
                                                     t.dispatched_at < older_than).limit(limit)))
        now = time.time()
        for row in stale:
            session.execute(update(t).where(t.id == row.id).values(dispatched_at=now))
            outbox.add(session, routes[row.status], row.id)
        return [row.id for row in stale]
