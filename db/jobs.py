"""Fine-tuning jobs: the state machine (db.states) over the lease model every claimed work shares
(db.leased: conditional UPDATEs, fencing tokens, the reaper), plus what only jobs have: file validation
before the queue, pause/resume (`pausing`, `paused`), and an event for every change.

The legal sources of every status change come from the transition table in db.states (the database's
trigger enforces the same table). Each change writes its job event (and, where work follows, its outbox
message) in the same transaction.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from contracts.errors import IllegalTransition
from db import events, knowledge_evals, outbox
from db.leased import Lease, LeasedQueue, Reaped
from db.pagination import Cursor, Page, fetch_page
from db.states import ACTIVE, JobStatus, WorkStatus, sources_of
from db.tables import FineTuningJob

S = JobStatus
WORKING = frozenset({S.RUNNING.value, S.PAUSING.value})
_CLEAR_LEASE = {"lease_owner": None, "lease_expires_at": None, "estimated_finish": None}
QUEUE: LeasedQueue[FineTuningJob] = LeasedQueue(
    FineTuningJob, outbox.RUN_JOB, noun="job", param="fine_tuning_job_id", working=WORKING,
    parked=(S.PAUSING.value, S.PAUSED.value), clear=_CLEAR_LEASE, webhook_kind="fine_tuning.job")


def error_object(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param}


# ------------------------------------------------------------------------------------------ queries
def insert(session: Session, job: FineTuningJob, *, training_file: str, validation_file: str | None) -> None:
    job.dispatched_at = time.time()
    session.add(job)
    session.flush()
    _event(session, job, f"Created fine-tuning job: {job.id}")
    files = f"Validating training file: {training_file}"
    if validation_file:
        files += f" and validation file: {validation_file}"
    _event(session, job, files)
    outbox.add(session, outbox.ADVANCE_JOB, job.id)


def get(session: Session, project_id: str, job_id: str) -> FineTuningJob | None:
    return session.scalar(
        select(FineTuningJob).where(FineTuningJob.id == job_id, FineTuningJob.project_id == project_id)
    )


get_any_project = QUEUE.get_any_project


def list_page(session: Session, project_id: str, cursor: Cursor, *,
              metadata: dict[str, str] | None = None) -> Page[FineTuningJob]:
    stmt = select(FineTuningJob).where(FineTuningJob.project_id == project_id)
    for key, value in (metadata or {}).items():
        stmt = stmt.where(FineTuningJob.user_metadata[key].as_string() == value)
    return fetch_page(session, stmt, FineTuningJob.id, cursor)


def count_active(session: Session, project_id: str, *, at_most: int) -> int:
    """Unfinished jobs of the project, counting no further than `at_most` (the quota check needs no more,
    and a big project's history must not make every job creation slower)."""
    active = (
        select(FineTuningJob.id)
        .where(FineTuningJob.project_id == project_id, FineTuningJob.status.in_([s.value for s in ACTIVE]))
        .limit(at_most)
        .subquery()
    )
    return session.scalar(select(func.count()).select_from(active)) or 0


def jobs_waiting_for_file(session: Session, file_id: str) -> list[str]:
    return list(
        session.scalars(
            select(FineTuningJob.id).where(
                FineTuningJob.status == S.VALIDATING_FILES,
                or_(FineTuningJob.training_file_id == file_id, FineTuningJob.validation_file_id == file_id),
            )
        )
    )


def file_in_use(session: Session, file_id: str) -> str | None:
    """The id of an unfinished job that reads this file, if any."""
    return session.scalar(
        select(FineTuningJob.id)
        .where(
            FineTuningJob.status.in_([s.value for s in ACTIVE]),
            or_(FineTuningJob.training_file_id == file_id, FineTuningJob.validation_file_id == file_id),
        )
        .limit(1)
    )


# --------------------------------------------------------------------------------- transitions core
def _transition(session: Session, job_id: str, target: JobStatus, *, only_from: set[str] | None = None,
                token: int | None = None, values: dict[str, Any] | None = None) -> bool:
    sources = set(sources_of(target))
    if only_from is not None:
        sources &= only_from
    return QUEUE.update(session, job_id, sources=sources, token=token, values={"status": target.value, **(values or {})})


def _event(session: Session, job: FineTuningJob | Lease, message: str, *, level: str = "info",
           type: str = "message", data: dict[str, Any] | None = None) -> None:
    job_id = job.work_id if isinstance(job, Lease) else job.id
    events.add(session, job_id=job_id, project_id=job.project_id, message=message, level=level, type=type, data=data)


_reload = QUEUE.reload


# -------------------------------------------------------------------------------- user operations
def cancel(session: Session, job: FineTuningJob) -> FineTuningJob:
    """Cancel now. Cancelling a cancelled job is a no-op; a succeeded or failed job cannot be cancelled.

    A running job becomes `cancelled` at once; its worker sees that at its next step boundary (its fenced
    writes stop matching) and stops without publishing anything.
    """
    now = int(time.time())
    if _transition(session, job.id, S.CANCELLED, values={"finished_at": now, **_CLEAR_LEASE}):
        _event(session, job, "Fine-tuning job cancelled")
        knowledge_evals.end_attached(session, job.id, WorkStatus.CANCELLED)
        return _reload(session, job.id)
    job = _reload(session, job.id)
    if job.status == S.CANCELLED:
        return job
    raise IllegalTransition(f"cannot cancel a job that has {job.status}", param="fine_tuning_job_id")


def pause(session: Session, job: FineTuningJob) -> FineTuningJob:
    """Running jobs go `pausing` (the worker checkpoints, then `paused`); waiting jobs go `paused` at once."""
    if _transition(session, job.id, S.PAUSING, only_from={S.RUNNING.value}):
        _event(session, job, "Pause requested; the job will checkpoint and pause")
        return _reload(session, job.id)
    if _transition(session, job.id, S.PAUSED, only_from={S.QUEUED.value, S.VALIDATING_FILES.value},
                   values={"estimated_finish": None}):
        _event(session, job, "Fine-tuning job paused")
        return _reload(session, job.id)
    job = _reload(session, job.id)
    if job.status in (S.PAUSED, S.PAUSING):
        return job
    raise IllegalTransition(f"cannot pause a job that has {job.status}", param="fine_tuning_job_id")


def resume(session: Session, job: FineTuningJob) -> FineTuningJob:
    """A paused job goes back to the queue (or to file validation if it was paused before that ended).

    Resuming a job that is already waiting or running is a no-op, so that client retries are harmless.
    """
    target = S.QUEUED if job.validated_at is not None else S.VALIDATING_FILES
    if _transition(session, job.id, target, only_from={S.PAUSED.value}, values={"dispatched_at": time.time()}):
        _event(session, job, "Fine-tuning job resumed")
        outbox.add(session, outbox.RUN_JOB if target == S.QUEUED else outbox.ADVANCE_JOB, job.id)
        return _reload(session, job.id)
    job = _reload(session, job.id)
    if job.status in (S.QUEUED, S.RUNNING, S.VALIDATING_FILES):
        return job
    if job.status == S.PAUSING:
        raise IllegalTransition("the job is still pausing; resume it once it is paused", param="fine_tuning_job_id")
    raise IllegalTransition(f"cannot resume a job that has {job.status}", param="fine_tuning_job_id")


# ----------------------------------------------------------------------------- file validation step
def mark_validated(session: Session, job: FineTuningJob, hyperparameters: dict[str, Any]) -> bool:
    """validating_files -> queued, with the resolved hyperparameters and the training wake-up message."""
    ok = _transition(
        session, job.id, S.QUEUED, only_from={S.VALIDATING_FILES.value},
        values={"hyperparameters": hyperparameters, "validated_at": int(time.time()), "dispatched_at": time.time()},
    )
    if ok:
        _event(session, job, "Files validated, moving job to queued state")
        outbox.add(session, outbox.RUN_JOB, job.id)
    return ok


def fail_validation(session: Session, job: FineTuningJob, error: dict[str, Any]) -> bool:
    ok = _transition(session, job.id, S.FAILED, only_from={S.VALIDATING_FILES.value},
                     values={"error": error, "finished_at": int(time.time())})
    if ok:
        _event(session, job, error["message"], level="error")
    return ok


# ------------------------------------------------------------------------------- worker operations
def claim(session: Session, job_id: str, *, owner: str, ttl: float, now: float | None = None) -> Lease | None:
    """queued -> running for exactly one caller. Returns its lease, or None (someone else has it / not queued)."""
    first_start = session.scalar(select(FineTuningJob.started_at).where(FineTuningJob.id == job_id)) is None
    lease = QUEUE.claim(session, job_id, owner=owner, ttl=ttl, now=now, values={
        "started_at": func.coalesce(FineTuningJob.started_at, int(time.time() if now is None else now))})
    if lease is not None:
        _event(session, lease, "Fine-tuning job started" if first_start
               else f"Fine-tuning job resumed (attempt {lease.attempt})")
    return lease


def heartbeat(session: Session, lease: Lease, *, ttl: float, now: float | None = None,
              values: dict[str, Any] | None = None) -> JobStatus:
    """Renew the lease (and write `values`); returns `running` or `pausing`. Raises LeaseLost otherwise."""
    return JobStatus(QUEUE.renew(session, lease, ttl=ttl, now=now, values=values))


def add_event(session: Session, lease: Lease, message: str, *, level: str = "info", type: str = "message",
              data: dict[str, Any] | None = None) -> None:
    """A worker's event, written only while its lease is valid (the caller heartbeats in the same transaction)."""
    _event(session, lease, message, level=level, type=type, data=data)


def complete(session: Session, lease: Lease, *, fine_tuned_model: str, trained_tokens: int,
             result_files: list[str]) -> None:
    QUEUE.finish(session, lease, S.SUCCEEDED.value, {"fine_tuned_model": fine_tuned_model,
                                                     "trained_tokens": trained_tokens, "result_files": result_files})
    _event(session, lease, f"New fine-tuned model created: {fine_tuned_model}")
    _event(session, lease, "The job has successfully completed")


def fail(session: Session, lease: Lease, error: dict[str, Any]) -> None:
    QUEUE.finish(session, lease, S.FAILED.value, {"error": error})
    _event(session, lease, f"Fine-tuning job failed: {error['message']}", level="error")
    knowledge_evals.end_attached(session, lease.work_id, WorkStatus.FAILED,
                                 {"code": "job_failed", "message": "The fine-tuning job failed.", "param": None})


def park(session: Session, lease: Lease, *, step: int) -> None:
    """pausing -> paused after the worker saved its checkpoint."""
    QUEUE.finish(session, lease, S.PAUSED.value, {}, sources={S.PAUSING.value})
    _event(session, lease, f"Fine-tuning job paused at step {step}")


def release(session: Session, lease: Lease, *, reason: str, counts_as_attempt: bool) -> None:
    """running -> queued so that another worker resumes from the last checkpoint.

    A graceful preemption (SIGTERM) does not count as a failed attempt; an infrastructure error does.
    """
    QUEUE.release(session, lease, counts_as_attempt=counts_as_attempt)
    _event(session, lease, f"Job re-queued: {reason}", level="warn")


# ------------------------------------------------------------------------------------------- reaper
def reap_expired_leases(session: Session, *, now: float | None = None, limit: int = 100) -> list[Reaped[FineTuningJob]]:
    """Jobs whose worker stopped renewing its lease: re-queue (attempts left), fail, or park if pausing."""
    reaped = QUEUE.reap_expired_leases(session, now=now, limit=limit)
    for item in reaped:
        job = item.row
        if item.outcome == "parked":
            _event(session, job, "Worker lost while pausing; job paused at its last checkpoint", level="warn")
        elif item.outcome == "requeued":
            _event(session, job, f"Worker lost (attempt {job.attempt} of {job.max_attempts}); "
                   "re-queued to resume from the last checkpoint", level="warn")
        else:
            error = _reload(session, job.id).error
            assert error is not None
            _event(session, job, error["message"], level="error")
            knowledge_evals.end_attached(session, job.id, WorkStatus.FAILED, error)
    return reaped


def redispatch_stale(session: Session, *, older_than: float, limit: int = 100) -> list[str]:
    """Re-announce jobs waiting in `validating_files`/`queued` whose wake-up message seems lost.

    The broker may drop a message (a worker killed while holding it unacknowledged on a virtual
    transport). Duplicates are harmless: advancing and claiming are conditional.
    """
    return QUEUE.redispatch_stale(session, older_than=older_than, limit=limit, statuses={
        S.VALIDATING_FILES.value: outbox.ADVANCE_JOB, S.QUEUED.value: outbox.RUN_JOB})
