"""Keeps a job's lease alive while its worker is busy between steps (loading, uploading, long steps)."""

from __future__ import annotations

import logging
import threading

from db import jobs
from db.jobs import Lease
from db.session import Database
from db.states import JobStatus
from ftaas.errors import FTaaSError, LeaseLost

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the lease every `ttl / 3` seconds in a background thread.

    If a renewal finds the lease gone (the job was cancelled, reaped or re-claimed), `lost` is set and the
    training loop stops at its next step boundary. Transient database errors are retried at the next tick;
    if they outlast the lease, the reaper will hand the job to another worker, and this worker's next
    fenced write fails.
    """

    def __init__(self, db: Database, lease: Lease, ttl: float) -> None:
        self._db = db
        self._lease = lease
        self._ttl = ttl
        self._stop = threading.Event()
        self.lost = threading.Event()
        self.status = JobStatus.RUNNING
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._ttl)

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"lease on {self._lease.job_id} lost")

    def _run(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            try:
                with self._db.write() as session:
                    self.status = jobs.heartbeat(session, self._lease, ttl=self._ttl)
            except LeaseLost:
                self.lost.set()
                return
            except FTaaSError as exc:
                log.warning("lease renewal for %s failed, will retry: %s", self._lease.job_id, exc)
