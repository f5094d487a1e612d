"""Knowledge evals: creation, lookups, and the status changes of their small state machine.

    queued -> running -> succeeded | failed | cancelled;  running -> queued (worker lost or shutting down)

As with jobs, every change is one conditional UPDATE, and a worker's writes carry the fencing token of its
claim: once an eval was cancelled, reaped or re-claimed, a stale worker's writes match nothing and it gets
`LeaseLost`. An eval attached to a fine-tuning job is never claimed: the job's worker runs it under the
job's own lease and writes it in the job's final transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db import outbox
from db.pagination import Page, fetch_page
from db.states import EvalStatus
from db.tables import KnowledgeEval
from ftaas.errors import IllegalTransition, LeaseLost

S = EvalStatus
_CLEAR_LEASE = {"lease_owner": None, "lease_expires_at": None}


@dataclass(frozen=True)
class EvalLease:
    eval_id: str
    project_id: str
    owner: str
    token: int
    attempt: int


def insert(session: Session, row: KnowledgeEval, *, dispatch: bool) -> None:
    """A new eval; `dispatch` announces it to the workers in the same transaction (standalone evals)."""
    row.dispatched_at = time.time()
    session.add(row)
    session.flush()
    if dispatch:
        outbox.add(session, outbox.RUN_EVAL, row.id)


def get(session: Session, project_id: str, eval_id: str) -> KnowledgeEval | None:
    return session.scalar(select(KnowledgeEval).where(KnowledgeEval.id == eval_id,
                                                      KnowledgeEval.project_id == project_id))


def get_any_project(session: Session, eval_id: str) -> KnowledgeEval | None:
    return session.get(KnowledgeEval, eval_id, populate_existing=True)


def for_job(session: Session, job_id: str) -> KnowledgeEval | None:
    return session.scalar(select(KnowledgeEval).where(KnowledgeEval.job_id == job_id))


def list_page(session: Session, project_id: str, *, after: str | None, limit: int) -> Page[KnowledgeEval]:
    stmt = select(KnowledgeEval).where(KnowledgeEval.project_id == project_id)
    return fetch_page(session, stmt, KnowledgeEval.id, after=after, limit=limit)


def _update(session: Session, eval_id: str, *, sources: set[str], token: int | None = None,
            values: dict[str, Any]) -> bool:
    stmt = update(KnowledgeEval).where(KnowledgeEval.id == eval_id, KnowledgeEval.status.in_(sorted(sources)))
    if token is not None:
        stmt = stmt.where(KnowledgeEval.fencing_token == token)
    return session.execute(stmt.values(**values).execution_options(synchronize_session=False)).rowcount == 1


def cancel(session: Session, row: KnowledgeEval) -> KnowledgeEval:
    """Cancel a queued or running eval (its worker stops at its next progress write). Idempotent."""
    if _update(session, row.id, sources={S.QUEUED, S.RUNNING},
               values={"status": S.CANCELLED.value, "finished_at": int(time.time()), **_CLEAR_LEASE}):
        return get_any_project(session, row.id)  # type: ignore[return-value]
    row = get_any_project(session, row.id)  # type: ignore[assignment]
    if row.status == S.CANCELLED:
        return row
    raise IllegalTransition(f"cannot cancel a knowledge eval that has {row.status}", param="knowledge_eval_id")


def claim(session: Session, eval_id: str, *, owner: str, ttl: float) -> EvalLease | None:
    """queued -> running for exactly one caller (standalone evals only)."""
    now = time.time()
    row = get_any_project(session, eval_id)
    if row is None or row.job_id is not None:
        return None
    ok = _update(session, eval_id, sources={S.QUEUED}, values={
        "status": S.RUNNING.value, "lease_owner": owner, "lease_expires_at": now + ttl,
        "fencing_token": KnowledgeEval.fencing_token + 1, "attempt": KnowledgeEval.attempt + 1,
        "started_at": int(now), "progress_done": 0})
    if not ok:
        return None
    row = get_any_project(session, eval_id)
    assert row is not None
    return EvalLease(row.id, row.project_id, owner, row.fencing_token, row.attempt)


def heartbeat(session: Session, lease: EvalLease, *, ttl: float, progress_done: int | None = None,
              progress_total: int | None = None) -> None:
    values: dict[str, Any] = {"lease_expires_at": time.time() + ttl}
    if progress_done is not None:
        values["progress_done"] = progress_done
    if progress_total is not None:
        values["progress_total"] = progress_total
    if not _update(session, lease.eval_id, sources={S.RUNNING}, token=lease.token, values=values):
        raise LeaseLost(f"knowledge eval {lease.eval_id} is no longer held by token {lease.token}")


def complete(session: Session, lease: EvalLease, *, summary: dict[str, Any], result_files: list[str]) -> None:
    if not _update(session, lease.eval_id, sources={S.RUNNING}, token=lease.token, values={
            "status": S.SUCCEEDED.value, "summary": summary, "result_files": result_files,
            "finished_at": int(time.time()), **_CLEAR_LEASE}):
        raise LeaseLost(f"knowledge eval {lease.eval_id} left running before it could complete")


def fail(session: Session, lease: EvalLease, error: dict[str, Any]) -> None:
    if not _update(session, lease.eval_id, sources={S.RUNNING}, token=lease.token, values={
            "status": S.FAILED.value, "error": error, "finished_at": int(time.time()), **_CLEAR_LEASE}):
        raise LeaseLost(f"knowledge eval {lease.eval_id} left running before it could fail")


def release(session: Session, lease: EvalLease, *, counts_as_attempt: bool) -> None:
    """running -> queued, so that another worker starts it over."""
    values: dict[str, Any] = {"status": S.QUEUED.value, "dispatched_at": time.time(), **_CLEAR_LEASE}
    if not counts_as_attempt:
        values["attempt"] = KnowledgeEval.attempt - 1
    if not _update(session, lease.eval_id, sources={S.RUNNING}, token=lease.token, values=values):
        raise LeaseLost(f"knowledge eval {lease.eval_id} left running before it could be released")
    outbox.add(session, outbox.RUN_EVAL, lease.eval_id)


def reap_expired_leases(session: Session, *, now: float | None = None, limit: int = 100) -> list[str]:
    """Standalone evals whose worker stopped renewing its lease: re-queue, or fail after max attempts."""
    now = time.time() if now is None else now
    expired = list(session.scalars(
        select(KnowledgeEval).where(KnowledgeEval.status == S.RUNNING, KnowledgeEval.job_id.is_(None),
                                    KnowledgeEval.lease_expires_at < now).limit(limit)))
    reaped = []
    for row in expired:
        if row.attempt < row.max_attempts:
            values: dict[str, Any] = {"status": S.QUEUED.value, "dispatched_at": now, **_CLEAR_LEASE}
        else:
            values = {"status": S.FAILED.value, "finished_at": int(now), **_CLEAR_LEASE,
                      "error": {"code": "worker_lost", "message": f"The worker running this eval was lost "
                                f"{row.attempt} times; giving up.", "param": None}}
        if _update(session, row.id, sources={S.RUNNING}, token=row.fencing_token, values=values):
            if values["status"] == S.QUEUED.value:
                outbox.add(session, outbox.RUN_EVAL, row.id)
            reaped.append(row.id)
    return reaped


def redispatch_stale(session: Session, *, older_than: float, limit: int = 100) -> list[str]:
    """Re-announce queued standalone evals whose wake-up message seems lost (duplicates are harmless)."""
    stale = list(session.scalars(select(KnowledgeEval).where(
        KnowledgeEval.status == S.QUEUED, KnowledgeEval.job_id.is_(None),
        KnowledgeEval.dispatched_at < older_than).limit(limit)))
    for row in stale:
        session.execute(update(KnowledgeEval).where(KnowledgeEval.id == row.id).values(dispatched_at=time.time()))
        outbox.add(session, outbox.RUN_EVAL, row.id)
    return [row.id for row in stale]


# ------------------------------------------------------------------ evals attached to a fine-tuning job
# Written by the job's worker under the job's lease (the caller heartbeats the job in the same transaction).
def record_progress(session: Session, eval_id: str, *, done: int, total: int) -> None:
    _update(session, eval_id, sources={S.RUNNING}, values={"progress_done": done, "progress_total": total})


def complete_attached(session: Session, eval_id: str, *, summary: dict[str, Any], result_files: list[str]) -> None:
    _update(session, eval_id, sources={S.RUNNING}, values={
        "status": S.SUCCEEDED.value, "summary": summary, "result_files": result_files,
        "finished_at": int(time.time())})


def fail_attached(session: Session, eval_id: str, error: dict[str, Any]) -> None:
    _update(session, eval_id, sources={S.RUNNING}, values={
        "status": S.FAILED.value, "error": error, "finished_at": int(time.time())})


def restart_attached(session: Session, eval_id: str, *, model: str) -> None:
    """A job's next attempt runs its eval again from the start (whatever the last attempt left)."""
    session.execute(update(KnowledgeEval).where(KnowledgeEval.id == eval_id).values(
        status=S.RUNNING.value, model=model, error=None, summary=None, result_files=[], progress_done=0,
        started_at=int(time.time()), finished_at=None, attempt=KnowledgeEval.attempt + 1))


def end_attached(session: Session, job_id: str, status: EvalStatus, error: dict[str, Any] | None = None) -> None:
    """The job ended (cancelled or failed) while its eval was unfinished: the eval ends with it."""
    session.execute(update(KnowledgeEval).where(
        KnowledgeEval.job_id == job_id, KnowledgeEval.status.in_([S.QUEUED.value, S.RUNNING.value])
    ).values(status=status.value, error=error, finished_at=int(time.time())))
