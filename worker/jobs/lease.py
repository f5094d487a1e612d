"""Keeps a job's lease alive while its worker is busy between steps (loading, uploading, long steps)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Self

from db import jobs
from db.jobs import Lease
from db.session import Database
from db.states import JobStatus
from ftaas.errors import FTaaSError, InfrastructureError, LeaseLost

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


class LeaseRenewal:
    """Renews the lease of standalone work (an eval, an adapter operation) every `interval` seconds while
    it runs, also when nothing reports progress for a while (a large model's first batch). A renewal that
    finds the lease gone marks it lost; the work's next `check()` then stops it."""

    def __init__(self, renew: Callable[[], None], *, interval: float) -> None:
        self.renew = renew
        self.interval = interval
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ftaas-work-lease", daemon=True)

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
            except InfrastructureError as exc:  # transient: the next tick retries; the lease outlasts a few
                log.warning("renewing a lease failed, will retry: %s", exc)
