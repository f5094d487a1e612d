"""Knowledge evals: creation, lookups, and the status changes of their small state machine (db.leased).

An eval attached to a fine-tuning job is never claimed: the job's worker runs it under the job's own lease
and writes it in the job's final transaction (the functions at the end).
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db import outbox
from db.leased import Lease, LeasedQueue
from db.states import WorkStatus
from db.tables import KnowledgeEval

S = WorkStatus
#: Standalone evals: claimed like jobs. An eval attached to a job (job_id set) is run under the job's lease.
QUEUE: LeasedQueue[KnowledgeEval] = LeasedQueue(KnowledgeEval, outbox.RUN_EVAL, noun="knowledge eval",
                                                param="knowledge_eval_id", standalone=KnowledgeEval.job_id.is_(None), webhook_kind="knowledge_eval")

insert = QUEUE.insert
get = QUEUE.get
get_any_project = QUEUE.get_any_project
list_page = QUEUE.list_page
cancel = QUEUE.cancel
fail = QUEUE.fail
release = QUEUE.release
reap_expired_leases = QUEUE.reap_expired_leases
redispatch_stale = QUEUE.redispatch_stale


def for_job(session: Session, job_id: str) -> KnowledgeEval | None:
    return session.scalar(select(KnowledgeEval).where(KnowledgeEval.job_id == job_id))


def claim(session: Session, eval_id: str, *, owner: str, ttl: float) -> Lease | None:
    """queued -> running for exactly one caller (standalone evals only)."""
    return QUEUE.claim(session, eval_id, owner=owner, ttl=ttl, values={"progress_done": 0})


def heartbeat(session: Session, lease: Lease, *, ttl: float, progress_done: int | None = None,
              progress_total: int | None = None) -> None:
    values = {"progress_done": progress_done, "progress_total": progress_total}
    QUEUE.renew(session, lease, ttl=ttl, values={k: v for k, v in values.items() if v is not None})


def complete(session: Session, lease: Lease, *, summary: dict[str, Any], result_files: list[str]) -> None:
    QUEUE.complete(session, lease, {"summary": summary, "result_files": result_files})


# ------------------------------------------------------------------ evals attached to a fine-tuning job
# Written by the job's worker under the job's lease (the caller heartbeats the job in the same transaction).
def record_progress(session: Session, eval_id: str, *, done: int, total: int) -> None:
    QUEUE.update(session, eval_id, sources={S.RUNNING}, values={"progress_done": done, "progress_total": total})


def complete_attached(session: Session, eval_id: str, *, summary: dict[str, Any], result_files: list[str]) -> None:
    QUEUE.update(session, eval_id, sources={S.RUNNING}, values={
        "status": S.SUCCEEDED.value, "summary": summary, "result_files": result_files,
        "finished_at": int(time.time())})


def fail_attached(session: Session, eval_id: str, error: dict[str, Any]) -> None:
    QUEUE.update(session, eval_id, sources={S.RUNNING}, values={
        "status": S.FAILED.value, "error": error, "finished_at": int(time.time())})


def restart_attached(session: Session, eval_id: str, *, model: str) -> None:
    """A job's next attempt runs its eval again from the start (whatever the last attempt left)."""
    session.execute(update(KnowledgeEval).where(KnowledgeEval.id == eval_id).values(
        status=S.RUNNING.value, model=model, error=None, summary=None, result_files=[], progress_done=0,
        started_at=int(time.time()), finished_at=None, attempt=KnowledgeEval.attempt + 1))


def end_attached(session: Session, job_id: str, status: WorkStatus, error: dict[str, Any] | None = None) -> None:
    """The job ended (cancelled or failed) while its eval was unfinished: the eval ends with it."""
    session.execute(update(KnowledgeEval).where(
        KnowledgeEval.job_id == job_id, KnowledgeEval.status.in_([S.QUEUED.value, S.RUNNING.value])
    ).values(status=status.value, error=error, finished_at=int(time.time())))
