"""Standalone work: what a worker claims besides fine-tuning jobs (knowledge evals, adapter operations).

Both share the lease model of db.leased: `StandaloneWork` makes a worker's writes for such work (claim,
renew, fail, give back, and how an error ends it), and `LeaseRenewal` renews a lease in a background thread
while the work runs (a job's lease keeper, worker.jobs.lease, is one too).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Self, TypeVar

from sqlalchemy.orm import Session

from contracts.errors import FTaaSError, InfrastructureError, LeaseLost
from db.leased import Lease, LeasedQueue
from db.session import Database
from db.tables import LeasedWork

Row = TypeVar("Row", bound=LeasedWork)
T = TypeVar("T")

log = logging.getLogger(__name__)


class LeaseRenewal:
    """Renews the lease of standalone work (an eval, an adapter operation) every `interval` seconds while
    it runs, also when nothing reports progress for a while (a large model's first batch). A renewal that
    finds the lease gone marks it lost; the work's next `check()` then stops it."""

    def __init__(self, renew: Callable[[], None], *, interval: float, name: str = "ftaas-work-lease") -> None:
        self.renew = renew
        self.interval = interval
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval)

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost("the lease was lost (cancelled or re-claimed)")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew()
            except LeaseLost:
                self.lost.set()
                return
            except FTaaSError as exc:  # transient: the next tick retries; the lease outlasts a few
                log.warning("renewing the lease (%s) failed, will retry: %s", self._thread.name, exc)


class StandaloneWork:
    """The writes a worker makes for standalone work it claimed (db.leased): claim, renew, fail, give back,
    and how an error ends the work (`settle`). Knowledge evals and adapter operations share it."""

    def __init__(self, db: Database, queue: LeasedQueue[Any], lease: Lease, *, ttl: float, max_attempts: int) -> None:
        self.db = db
        self.queue = queue
        self.lease = lease
        self.ttl = ttl
        self.max_attempts = max_attempts

    @classmethod
    def claim(cls, db: Database, queue: LeasedQueue[Row], work_id: str, *, owner: str, ttl: float,
              read: Callable[[Session, Row], T], values: dict[str, Any] | None = None
              ) -> tuple[StandaloneWork, T] | None:
        """queued -> running for this worker, and `read(session, row)` in the same transaction (what the work
        needs from its row); None when the work was not claimed (taken, cancelled, or not standalone)."""
        with db.write() as session:
            lease = queue.claim(session, work_id, owner=owner, ttl=ttl, values=values)
            if lease is None:
                return None
            row = queue.reload(session, work_id)
            return cls(db, queue, lease, ttl=ttl, max_attempts=row.max_attempts), read(session, row)

    def renewal(self) -> LeaseRenewal:
        return LeaseRenewal(self.renew, interval=self.ttl / 3)

    def renew(self, values: dict[str, Any] | None = None) -> None:
        """Extend the lease, writing `values` (progress) with it; `LeaseLost` when the work is not ours."""
        with self.db.write() as session:
            self.queue.renew(session, self.lease, ttl=self.ttl, values=values)

    def fail(self, error: dict[str, Any]) -> str:
        """failed (or lease-lost when someone else owns the work now)."""
        try:
            with self.db.write() as session:
                self.queue.fail(session, self.lease, error)
        except LeaseLost:
            return "lease-lost"
        return "failed"

    def retry_or_fail(self, exc: InfrastructureError) -> str:
        """An infrastructure error: back to the queue while attempts remain, then failed with the reason."""
        if self.lease.attempt >= self.max_attempts:
            return self.fail({"code": exc.code, "param": None,
                              "message": f"Gave up after {self.lease.attempt} attempts: {exc.public_message}"})
        try:
            with self.db.write() as session:
                self.queue.release(session, self.lease, counts_as_attempt=True)
            return "requeued"
        except (LeaseLost, InfrastructureError):
            log.warning("%s %s: could not release after %s", self.queue.noun, self.lease.work_id, exc)
            return "lease-lost"

    def settle(self, exc: BaseException, *, internal_code: str) -> str:
        """How an error ends the work: lease-lost (someone else owns it now), failed with the error's code
        (user and configuration errors, and bugs, under `internal_code`: never retried), or requeued/failed
        by `retry_or_fail` (infrastructure errors)."""
        if isinstance(exc, LeaseLost):
            return "lease-lost"
        if isinstance(exc, InfrastructureError):
            return self.retry_or_fail(exc)
        if isinstance(exc, FTaaSError):
            return self.fail({"code": exc.code, "message": exc.public_message, "param": exc.param})
        log.error("%s %s failed", self.queue.noun, self.lease.work_id, exc_info=exc)
        return self.fail({"code": internal_code, "message": f"{type(exc).__name__}: {exc}", "param": None})
