"""Run one fine-tuning job: claim it, read its plan and download its inputs (worker.jobs.plan,
worker.jobs.workspace), train (worker.jobs.execution, here or in a data-parallel group: worker.jobs.group),
then publish (worker.jobs.publishing), park or hand it back.

The database is the truth and the Celery message only a wake-up call. The claim is a conditional update
that one delivery wins; every later write is fenced by the claim's token, so a duplicate or stale delivery
does nothing, and a cancelled job's worker notices at its next step and stops.

Failure handling follows the error taxonomy: a user error (bad data, an adapter that does not fit the model)
or a configuration error fails the job at once; an infrastructure error in a step the worker can repeat is
waited out there (worker.outages: backoff, no attempt spent, `dependency_outage` past the deadline), and one
that escapes those steps releases the job to the queue, counting an attempt; a lost lease means someone else
owns the job now, so the worker stops quietly. A worker that is shutting down checkpoints
and releases the job without counting an attempt (worker.preemption).
"""

from __future__ import annotations

import logging
import shutil
import uuid
from typing import Any

from contracts.errors import FTaaSError, InfrastructureError, LeaseLost
from db import jobs
from db.leased import Lease
from worker import preemption
from worker.context import WorkerContext
from worker.jobs.events import log_event
from worker.jobs.execution import execute
from worker.jobs.group import train_in_group, training_device
from worker.jobs.lease import LeaseKeeper
from worker.jobs.plan import plan_job
from worker.jobs.publishing import publish_model, report_learning
from worker.jobs.workspace import Workspace, download_inputs
from worker.outages import ride_out
from worker.training.distributed import DistributedContext
from worker.training.kernels import return_freed_memory

log = logging.getLogger(__name__)


def run_job(ctx: WorkerContext, job_id: str) -> str:
    """Returns what happened: not-claimed, succeeded, paused, preempted, stopped, failed, requeued or lease-lost."""
    with ctx.db.write() as session:
        lease = jobs.claim(session, job_id, owner=ctx.owner, ttl=ctx.settings.work.lease_ttl_seconds)
    if lease is None:
        return "not-claimed"
    workspace = Workspace(ctx.work_dir / f"{job_id}-{lease.token}-{uuid.uuid4().hex[:8]}")
    try:
        with LeaseKeeper(ctx.db, lease, ctx.settings.work.lease_ttl_seconds) as keeper, preemption.preemptible() as preempt:
            return _run_claimed(ctx, lease, keeper, workspace, preempt)
    except LeaseLost:
        log.info("job %s: lease lost (cancelled, reaped or re-claimed); stopping", job_id)
        return "lease-lost"
    except InfrastructureError as exc:
        log.warning("job %s: infrastructure error, releasing for retry: %s", job_id, exc)
        return _release_or_fail(ctx, lease, exc)
    except FTaaSError as exc:  # user, integrity, configuration errors and outages past the deadline
        _finish_failed(ctx, lease, jobs.error_object(exc.code, exc.public_message, exc.param))
        return "failed"
    except Exception as exc:  # a bug or a library failure: not retryable by definition
        log.exception("job %s failed", job_id)
        _finish_failed(ctx, lease, jobs.error_object("training_error", f"{type(exc).__name__}: {exc}"))
        return "failed"
    finally:
        shutil.rmtree(workspace.root, ignore_errors=True)
        return_freed_memory()


def _finish_failed(ctx: WorkerContext, lease: Lease, error: dict[str, Any]) -> None:
    try:
        with ctx.db.write() as session:
            jobs.fail(session, lease, error)
    except LeaseLost:
        pass


def _release_or_fail(ctx: WorkerContext, lease: Lease, exc: InfrastructureError) -> str:
    try:
        with ctx.db.write() as session:
            job = jobs.get_any_project(session, lease.work_id)
            if job is not None and job.attempt >= job.max_attempts:
                jobs.fail(session, lease, jobs.error_object(
                    exc.code, f"Gave up after {job.attempt} attempts: {exc.public_message}"))
                return "failed"
            jobs.release(session, lease, reason=f"{exc.code}: {exc}", counts_as_attempt=True)
        return "requeued"
    except (LeaseLost, InfrastructureError):
        # The reaper re-queues the job once its lease expires.
        return "lease-lost"


# ------------------------------------------------------------------------------------------- train
def _run_claimed(ctx: WorkerContext, lease: Lease, keeper: LeaseKeeper, workspace: Workspace, preempt: Any) -> str:
    alive = lambda: not keeper.lost.is_set()  # noqa: E731
    plan, training, validation, resume = ride_out(lambda: plan_job(ctx, lease), what="read the job's plan",
                                                  policy=ctx.outages, alive=alive)
    ride_out(lambda: download_inputs(ctx, workspace, training, validation, resume), what="download the job's inputs",
             policy=ctx.outages, alive=alive)
    keeper.check()
    if ctx.settings.training.processes > 1:
        outcome = train_in_group(ctx, lease, plan, workspace, keeper, preempt)
    else:
        outcome = execute(ctx, lease, plan, workspace, DistributedContext.single(), preempt=preempt.is_set,
                          lease_alive=alive, device=training_device())
    if outcome.status in ("stopped", "lease-lost"):
        return "stopped"
    if outcome.status == "paused":
        ride_out(lambda: _in_transaction(ctx, lambda session: jobs.park(session, lease, step=outcome.step)),
                 what="park the paused job", policy=ctx.outages, alive=alive)
        return "paused"
    if outcome.status == "preempted":
        reason = (f"the worker is shutting down; checkpoint saved at step {outcome.step}, another worker will "
                  "resume from it")
        ride_out(lambda: _in_transaction(ctx, lambda session: jobs.release(session, lease, reason=reason,
                                                                          counts_as_attempt=False)),
                 what="hand the job back", policy=ctx.outages, alive=alive)
        return "preempted"
    if outcome.stopped_early_at is not None:
        log_event(ctx, lease, f"Early stopping at step {outcome.stopped_early_at}: validation loss stopped "
                  f"improving; the model is the checkpoint at step {outcome.best_step}")
    elif outcome.best_step is not None:
        log_event(ctx, lease, f"The model is the checkpoint at step {outcome.best_step} (best validation loss)")
    report_learning(ctx, lease, plan, outcome)
    assert outcome.adapter_dir is not None
    publish_model(ctx, lease, plan, outcome, alive=alive)
    return "succeeded"


def _in_transaction(ctx: WorkerContext, write: Any) -> None:
    with ctx.db.write() as session:
        write(session)
