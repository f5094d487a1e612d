"""The outbox relay and the reaper: the loop that keeps the database and the broker in step.

* Relay: publishes committed outbox messages to the broker, then marks them. At-least-once: a crash
  between publish and mark re-publishes, which idempotent tasks absorb.
* Reaper: jobs whose lease expired (their worker died) are re-queued to resume from the last checkpoint,
  up to `max_attempts`, then failed with `worker_lost`; a job lost while pausing is parked. Work whose
  wake-up message seems lost (waiting far longer than a dispatch takes) is announced again. Expired
  files and stored completions past their retention are deleted.
* Webhooks: the webhook outbox is delivered on a thread of its own (worker.webhooks), so a slow endpoint
  never holds up the relay.

Runs in the API process under `ftaas up` and as its own Deployment (`ftaas relay`) in a cluster. Several
instances may run at once: claims are conditional (SKIP LOCKED on PostgreSQL).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from contracts.errors import FTaaSError
from contracts.settings import Settings
from db import adapter_operations, files, jobs, knowledge_evals, outbox, stored_completions, training_api
from db.session import Database
from storage import ArtifactStore
from worker.sweeper import SweepReport, sweep_orphans
from worker.webhooks import WebhookDispatcher

log = logging.getLogger(__name__)

OUTBOX_RETENTION_SECONDS = 24 * 3600


@dataclass
class MaintenanceReport:
    published: int = 0
    requeued: int = 0
    failed: int = 0
    parked: int = 0
    redispatched: int = 0
    expired_files: int = 0
    expired_completions: int = 0


class Maintenance:
    def __init__(self, db: Database, store: ArtifactStore, publisher: Any, settings: Settings) -> None:
        """`publisher` is a Celery app (only `send_task` is used)."""
        self.db = db
        self.store = store
        self.publisher = publisher
        self.settings = settings

    def relay_once(self, batch: int = 100) -> int:
        if self.db.is_sqlite:
            # One relay per embedded installation, and SQLite has a single writer: publishing inside a write
            # transaction would hold every API write back for the broker's round trips (measured: -27 %
            # create throughput, twice the p99; docs/benchmarks.md, "Measurements behind code comments"). Read, publish, then mark in a
            # short write.
            with self.db.read() as session:
                messages = outbox.unpublished(session, batch)
            if not messages:
                return 0
            published, failure = self._publish(messages)
            with self.db.write() as session:
                outbox.mark_published(session, published)
                if failure is not None:
                    outbox.record_failure(session, *failure)
            return len(published)
        # PostgreSQL: SKIP LOCKED claims rows (not the table) for this transaction, so several relays
        # publish disjoint messages without waiting for each other.
        with self.db.write() as session:
            published, failure = self._publish(outbox.claim_unpublished(session, batch))
            outbox.mark_published(session, published)
            if failure is not None:
                outbox.record_failure(session, *failure)
        return len(published)

    def _publish(self, messages: list[outbox.TaskMessage]) -> tuple[list[int], tuple[int, str] | None]:
        """Publish in order; stop at the first failure (the broker is down: retry next round)."""
        published: list[int] = []
        for message in messages:
            try:
                self.publisher.send_task(message.task, args=message.args, queue=message.queue)
            except Exception as exc:
                log.warning("outbox: publishing %s failed: %s", message.task, exc)
                return published, (message.id, repr(exc))
            published.append(message.id)
        return published, None

    def reap_once(self, now: float | None = None) -> MaintenanceReport:
        now = time.time() if now is None else now
        report = MaintenanceReport()
        with self.db.write() as session:
            for reaped in jobs.reap_expired_leases(session, now=now):
                log.warning("reaper: job %s %s", reaped.row.id, reaped.outcome)
                if reaped.outcome == "requeued":
                    report.requeued += 1
                elif reaped.outcome == "failed":
                    report.failed += 1
                else:
                    report.parked += 1
            for queue in (knowledge_evals.QUEUE, adapter_operations.QUEUE, training_api.MODELS):
                for item in queue.reap_expired_leases(session, now=now):
                    log.warning("reaper: %s %s %s (worker lost)", queue.noun, item.row.id, item.outcome)
                    if item.outcome == "failed":
                        report.failed += 1
                    else:
                        report.requeued += 1
            stale_before = now - self.settings.work.redispatch_after_seconds
            report.redispatched += len(jobs.redispatch_stale(session, older_than=stale_before))
            report.redispatched += len(knowledge_evals.redispatch_stale(session, older_than=stale_before))
            report.redispatched += len(adapter_operations.QUEUE.redispatch_stale(session, older_than=stale_before))
            report.redispatched += len(training_api.MODELS.redispatch_stale(session, older_than=stale_before))
            report.redispatched += len(files.redispatch_stale(session, older_than=stale_before))
            outbox.purge_published(session, older_than=now - OUTBOX_RETENTION_SECONDS)
            expired_keys = files.take_expired(session, now=now)
        # After commit: a crash here leaves orphaned objects, never rows without their objects.
        for key in expired_keys:
            self.store.delete(key)
        report.expired_files = len(expired_keys)
        report.expired_completions = self.expire_stored_completions(now)
        return report

    def expire_stored_completions(self, now: float, batch: int = 500) -> int:
        """Delete stored completions past the retention setting, `batch` per transaction (a long backlog
        never holds one long write)."""
        days = self.settings.stored_completions.retention_days
        deleted = 0
        while days:
            with self.db.write() as session:
                count = stored_completions.delete_older_than(session, days * 86400, now=now, batch=batch)
            deleted += count
            if count < batch:
                break
        return deleted

    def sweep_once(self, now: float | None = None) -> SweepReport:
        """Remove orphaned objects and unfinished writes older than the grace period (worker.sweeper)."""
        return sweep_orphans(self.db, self.store, now=time.time() if now is None else now,
                             grace_seconds=self.settings.work.orphan_grace_seconds)

    def run(self, stop: threading.Event) -> None:
        """Relay every `relay_poll_seconds`, reap every `maintenance_interval_seconds` and sweep every
        `orphan_sweep_interval_seconds` until `stop`."""
        next_reap = 0.0
        next_sweep = time.monotonic() + self.settings.work.orphan_sweep_interval_seconds
        while not stop.is_set():
            try:
                self.relay_once()
                if time.monotonic() >= next_reap:
                    self.reap_once()
                    next_reap = time.monotonic() + self.settings.work.maintenance_interval_seconds
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.settings.work.orphan_sweep_interval_seconds
                    self.sweep_once()
            except FTaaSError as exc:
                log.warning("maintenance round failed, will retry: %s", exc)
            except Exception:
                log.exception("maintenance round failed, will retry")
            stop.wait(self.settings.work.relay_poll_seconds)

    def start_thread(self) -> tuple[threading.Thread, threading.Event]:
        """The maintenance loop and the webhook dispatcher, both stopped by the returned event."""
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop,), name="ftaas-maintenance", daemon=True)
        thread.start()
        threading.Thread(target=WebhookDispatcher(self.db, self.settings).run, args=(stop,), name="ftaas-webhooks",
                         daemon=True).start()
        return thread, stop
