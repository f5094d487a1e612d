"""Fine-tuning jobs: the state machine, worker leases with fencing tokens, and the reaper's queries.

Every status change is one conditional UPDATE (`WHERE status IN <legal sources>`), so concurrent actors
(API cancel, worker completion, reaper) cannot both win: whoever commits second matches no row and
re-reads. Worker writes also carry `fencing_token = <token of its claim>`: once a job was re-claimed, or
left `running`/`pausing`, a stale worker's writes match nothing and it gets `LeaseLost`.

Each change writes its job event (and, where work follows, its outbox message) in the same transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from db import events, knowledge_evals, outbox
from db.pagination import Page, fetch_page
from db.states import ACTIVE, JobStatus, WorkStatus, sources_of
from db.tables import FineTuningJob
from ftaas.errors import IllegalTransition, LeaseLost

S = JobStatus
WORKING = (S.RUNNING.value, S.PAUSING.value)


@dataclass(frozen=True)
class Lease:
    """A worker's claim on a job. `token` fences every write the worker makes."""

    job_id: str
    project_id: str
    owner: str
    token: int
    attempt: int


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


def get_any_project(session: Session, job_id: str) -> FineTuningJob | None:
    """For workers and the reaper, which act on ids handed to them by the database."""
    return session.get(FineTuningJob, job_id, populate_existing=True)


def list_page(session: Session, project_id: str, *, after: str | None, limit: int,
              metadata: dict[str, str] | None = None) -> Page[FineTuningJob]:
    stmt = select(FineTuningJob).where(FineTuningJob.project_id == project_id)
    for key, value in (metadata or {}).items():
        stmt = stmt.where(FineTuningJob.user_metadata[key].as_string() == value)
    return fetch_page(session, stmt, FineTuningJob.id, after=after, limit=limit)


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
    stmt = update(FineTuningJob).where(FineTuningJob.id == job_id, FineTuningJob.status.in_(sorted(sources)))
    if token is not None:
        stmt = stmt.where(FineTuningJob.fencing_token == token)
    result = session.execute(
        stmt.values(status=target.value, **(values or {})).execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def _event(session: Session, job: FineTuningJob | Lease, message: str, *, level: str = "info",
           type: str = "message", data: dict[str, Any] | None = None) -> None:
    job_id = job.job_id if isinstance(job, Lease) else job.id
    events.add(session, job_id=job_id, project_id=job.project_id, message=message, level=level, type=type, data=data)


def _reload(session: Session, job_id: str) -> FineTuningJob:
    job = get_any_project(session, job_id)
    assert job is not None, job_id
    return job


_CLEAR_LEASE = {"lease_owner": None, "lease_expires_at": None, "estimated_finish": None}


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
    now = time.time() if now is None else now
    first_start = session.scalar(select(FineTuningJob.started_at).where(FineTuningJob.id == job_id)) is None
    ok = _transition(
        session, job_id, S.RUNNING, only_from={S.QUEUED.value},
        values={
            "lease_owner": owner,
            "lease_expires_at": now + ttl,
            "fencing_token": FineTuningJob.fencing_token + 1,
            "attempt": FineTuningJob.attempt + 1,
            "started_at": func.coalesce(FineTuningJob.started_at, int(now)),
        },
    )
    if not ok:
        return None
    job = _reload(session, job_id)
    lease = Lease(job_id=job.id, project_id=job.project_id, owner=owner, token=job.fencing_token, attempt=job.attempt)
    _event(session, job, "Fine-tuning job started" if first_start else f"Fine-tuning job resumed (attempt {job.attempt})")
    return lease


def heartbeat(session: Session, lease: Lease, *, ttl: float, now: float | None = None,
              values: dict[str, Any] | None = None) -> JobStatus:
    """Renew the lease (and write `values`); returns `running` or `pausing`. Raises LeaseLost otherwise."""
    now = time.time() if now is None else now
    result = session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == lease.job_id, FineTuningJob.fencing_token == lease.token,
               FineTuningJob.status.in_(WORKING))
        .values(lease_expires_at=now + ttl, **(values or {}))
        .returning(FineTuningJob.status)
        .execution_options(synchronize_session=False)
    ).first()
    if result is None:
        raise LeaseLost(f"job {lease.job_id} is no longer held by token {lease.token}")
    return JobStatus(result[0])


def add_event(session: Session, lease: Lease, message: str, *, level: str = "info", type: str = "message",
              data: dict[str, Any] | None = None) -> None:
    """A worker's event, written only while its lease is valid (the caller heartbeats in the same transaction)."""
    _event(session, lease, message, level=level, type=type, data=data)


def complete(session: Session, lease: Lease, *, fine_tuned_model: str, trained_tokens: int,
             result_files: list[str]) -> None:
    ok = _transition(
        session, lease.job_id, S.SUCCEEDED, only_from=set(WORKING), token=lease.token,
        values={
            "fine_tuned_model": fine_tuned_model,
            "trained_tokens": trained_tokens,
            "result_files": result_files,
            "finished_at": int(time.time()),
            **_CLEAR_LEASE,
        },
    )
    if not ok:
        raise LeaseLost(f"job {lease.job_id} left running before it could complete")
    _event(session, lease, f"New fine-tuned model created: {fine_tuned_model}")
    _event(session, lease, "The job has successfully completed")


def fail(session: Session, lease: Lease, error: dict[str, Any]) -> None:
    ok = _transition(session, lease.job_id, S.FAILED, only_from=set(WORKING), token=lease.token,
                     values={"error": error, "finished_at": int(time.time()), **_CLEAR_LEASE})
    if not ok:
        raise LeaseLost(f"job {lease.job_id} left running before it could fail")
    _event(session, lease, f"Fine-tuning job failed: {error['message']}", level="error")
    knowledge_evals.end_attached(session, lease.job_id, WorkStatus.FAILED,
                                 {"code": "job_failed", "message": "The fine-tuning job failed.", "param": None})


def park(session: Session, lease: Lease, *, step: int) -> None:
    """pausing -> paused after the worker saved its checkpoint."""
    ok = _transition(session, lease.job_id, S.PAUSED, only_from={S.PAUSING.value}, token=lease.token,
                     values=_CLEAR_LEASE)
    if not ok:
        raise LeaseLost(f"job {lease.job_id} left pausing before it could park")
    _event(session, lease, f"Fine-tuning job paused at step {step}")


def release(session: Session, lease: Lease, *, reason: str, counts_as_attempt: bool) -> None:
    """running -> queued so that another worker resumes from the last checkpoint.

    A graceful preemption (SIGTERM) does not count as a failed attempt; an infrastructure error does.
    """
    values: dict[str, Any] = {**_CLEAR_LEASE, "dispatched_at": time.time()}
    if not counts_as_attempt:
        values["attempt"] = FineTuningJob.attempt - 1
    ok = _transition(session, lease.job_id, S.QUEUED, only_from={S.RUNNING.value}, token=lease.token, values=values)
    if not ok:
        raise LeaseLost(f"job {lease.job_id} left running before it could be released")
    _event(session, lease, f"Job re-queued: {reason}", level="warn")
    outbox.add(session, outbox.RUN_JOB, lease.job_id)


# ------------------------------------------------------------------------------------------- reaper
@dataclass(frozen=True)
class ReapedJob:
    job_id: str
    outcome: str  # "requeued" | "failed" | "paused"


def reap_expired_leases(session: Session, *, now: float | None = None, limit: int = 100) -> list[ReapedJob]:
    """Jobs whose worker stopped renewing its lease: re-queue (attempts left), fail, or park if pausing."""
    now = time.time() if now is None else now
    expired = list(
        session.scalars(
            select(FineTuningJob)
            .where(FineTuningJob.status.in_(WORKING), FineTuningJob.lease_expires_at < now)
            .order_by(FineTuningJob.lease_expires_at)
            .limit(limit)
        )
    )
    reaped: list[ReapedJob] = []
    for job in expired:
        guard = and_(FineTuningJob.fencing_token == job.fencing_token, FineTuningJob.lease_expires_at < now)
        if job.status == S.PAUSING:
            stmt_ok = _reap(session, job, S.PAUSED, guard, {})
            if stmt_ok:
                _event(session, job, "Worker lost while pausing; job paused at its last checkpoint", level="warn")
                reaped.append(ReapedJob(job.id, "paused"))
        elif job.attempt < job.max_attempts:
            if _reap(session, job, S.QUEUED, guard, {"dispatched_at": now}):
                _event(session, job, f"Worker lost (attempt {job.attempt} of {job.max_attempts}); "
                       "re-queued to resume from the last checkpoint", level="warn")
                outbox.add(session, outbox.RUN_JOB, job.id)
                reaped.append(ReapedJob(job.id, "requeued"))
        else:
            error = error_object("worker_lost", f"The worker running this job was lost {job.attempt} times; "
                                 "giving up.")
            if _reap(session, job, S.FAILED, guard, {"error": error, "finished_at": int(now)}):
                _event(session, job, error["message"], level="error")
                knowledge_evals.end_attached(session, job.id, WorkStatus.FAILED, error)
                reaped.append(ReapedJob(job.id, "failed"))
    return reaped


def _reap(session: Session, job: FineTuningJob, target: JobStatus, guard: Any, values: dict[str, Any]) -> bool:
    result = session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job.id, FineTuningJob.status == job.status, guard)
        .values(status=target.value, **_CLEAR_LEASE, **values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def redispatch_stale(session: Session, *, older_than: float, limit: int = 100) -> list[str]:
    """Re-announce jobs waiting in `validating_files`/`queued` whose wake-up message seems lost.

    The broker may drop a message (a worker killed while holding it unacknowledged on a virtual
    transport). Duplicates are harmless: advancing and claiming are conditional.
    """
    stale = list(
        session.scalars(
            select(FineTuningJob)
            .where(FineTuningJob.status.in_([S.VALIDATING_FILES.value, S.QUEUED.value]),
                   FineTuningJob.dispatched_at < older_than)
            .limit(limit)
        )
    )
    now = time.time()
    for job in stale:
        session.execute(update(FineTuningJob).where(FineTuningJob.id == job.id).values(dispatched_at=now))
        outbox.add(session, outbox.RUN_JOB if job.status == S.QUEUED else outbox.ADVANCE_JOB, job.id)
    return [job.id for job in stale]
