"""A job's events, written by its worker under the job's lease."""

from __future__ import annotations

from db import jobs
from db.leased import Lease
from worker.context import WorkerContext
from worker.outages import ride_out


def log_event(ctx: WorkerContext, lease: Lease, message: str, *, level: str = "info") -> None:
    """A job event under the lease, waiting out a database outage (worker.outages)."""

    def write() -> None:
        with ctx.db.write() as session:
            jobs.heartbeat(session, lease, ttl=ctx.settings.work.lease_ttl_seconds)
            jobs.add_event(session, lease, message, level=level)

    ride_out(write, what="write a job event", policy=ctx.outages)
