"""Keeps a fine-tuning job's lease alive while its worker is busy (loading, uploading, long steps)."""

from __future__ import annotations

from contracts.errors import LeaseLost
from db import jobs
from db.leased import Lease
from db.session import Database
from db.states import JobStatus
from worker.standalone import LeaseRenewal


class LeaseKeeper(LeaseRenewal):
    """Renews a job's lease every `ttl / 3` seconds in a background thread.

    If a renewal finds the lease gone (the job was cancelled, reaped or re-claimed), `lost` is set and the
    training loop stops at its next step boundary. Transient database errors are retried at the next tick;
    if they outlast the lease, the reaper will hand the job to another worker, and this worker's next
    fenced write fails. `status` is the job's status at the last renewal (running or pausing).
    """

    def __init__(self, db: Database, lease: Lease, ttl: float) -> None:
        self._db = db
        self._lease = lease
        self._ttl = ttl
        self.status = JobStatus.RUNNING
        super().__init__(self._heartbeat, interval=ttl / 3, name=f"lease-{lease.work_id}")

    def _heartbeat(self) -> None:
        with self._db.write() as session:
            self.status = jobs.heartbeat(session, self._lease, ttl=self._ttl)

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"lease on {self._lease.work_id} lost")
