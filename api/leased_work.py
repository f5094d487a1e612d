"""The lookups every kind of claimed work offers its owner (knowledge evals, adapter operations): get,
list and cancel within the caller's project, over the work's queue (db.leased)."""

from __future__ import annotations

from typing import Generic, TypeVar

from contracts.errors import NotFound
from db.leased import LeasedQueue
from db.pagination import Cursor, Page
from db.projects import Principal
from db.session import Database
from db.tables import LeasedWork

Row = TypeVar("Row", bound=LeasedWork)


class LeasedWorkService(Generic[Row]):
    """Subclasses set `queue` and `not_found_code`; other projects' work is reported as missing (404)."""

    queue: LeasedQueue[Row]
    not_found_code: str
    db: Database

    def get(self, principal: Principal, work_id: str) -> Row:
        with self.db.read() as session:
            row = self.queue.get(session, principal.project_id, work_id)
        if row is None:
            raise NotFound(f"No such {self.queue.noun}: {work_id}", code=self.not_found_code, param=self.queue.param)
        return row

    def list(self, principal: Principal, cursor: Cursor) -> Page[Row]:
        with self.db.read() as session:
            return self.queue.list_page(session, principal.project_id, cursor)

    def cancel(self, principal: Principal, work_id: str) -> Row:
        """queued or running -> cancelled; cancelling a cancelled one is a no-op, a finished one a 409."""
        row = self.get(principal, work_id)
        self.check_cancellable(row)
        with self.db.write() as session:
            return self.queue.cancel(session, row)

    def check_cancellable(self, row: Row) -> None:
        """Raise when this row may not be cancelled by its owner directly (beyond the state machine's rule)."""
