"""Run one fine-tuning job: claim it, prepare its inputs, train, then publish, park or hand it back.

The database is the truth and the Celery message only a wake-up call. The claim is a conditional update
that one delivery wins; every later write is fenced by the claim's token, so a duplicate or stale delivery
does nothing, and a cancelled job's worker notices at its next step and stops.

Failure handling follows the error taxonomy: a user error (bad data, an adapter that does not fit the model)
fails the job at once; an infrastructure error releases it to the queue, counting an attempt; a lost lease
means someone else owns the job now, so the worker stops quietly. A worker that is shutting down checkpoints
and releases the job without counting an attempt (worker.preemption).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from typing import Any

from db import checkpoints, events, files, ids, jobs, models
from db.jobs import Lease
from db.states import FileStatus
from db.tables import File, Project
from ftaas import errors
from ftaas.errors import InfrastructureError, IntegrityFailure, LeaseLost, UserError
from storage import layout
from storage.manifest import download_artifact, publish_directory
from worker import preemption
from worker.context import WorkerContext
from worker.jobs.execution import JobPlan, Workspace, execute, log_event, read_outcome
from worker.jobs.lease import LeaseKeeper
from worker.jobs.results import metrics_csv
from worker.training.distributed import DistributedContext
from worker.training.learning import final_pass_message, learned_message, low_accuracy_warning
from worker.training.spec import TrainingSpec
from worker.training.trainer import TrainingOutcome

log = logging.getLogger(__name__)

#: Files a checkpoint may contain when it is downloaded to resume from (no pickles, ever).
CHECKPOINT_FILES = (".safetensors", ".json")


def run_job(ctx: WorkerContext, job_id: str) -> str:
    """Returns what happened: not-claimed, succeeded, paused, preempted, stopped, failed, requeued or lease-lost."""
    with ctx.db.write() as session:
        lease = jobs.claim(session, job_id, owner=ctx.owner, ttl=ctx.settings.lease_ttl_seconds)
    if lease is None:
        return "not-claimed"
    workspace = Workspace(ctx.work_dir / f"{job_id}-{lease.token}-{uuid.uuid4().hex[:8]}")
    try:
        with LeaseKeeper(ctx.db, lease, ctx.settings.lease_ttl_seconds) as keeper, preemption.preemptible() as preempt:
            return _run_claimed(ctx, lease, keeper, workspace, preempt)
    except LeaseLost:
        log.info("job %s: lease lost (cancelled, reaped or re-claimed); stopping", job_id)
        return "lease-lost"
    except (UserError, IntegrityFailure) as exc:
        _finish_failed(ctx, lease, jobs.error_object(exc.code, exc.message, exc.param))
        return "failed"
    except InfrastructureError as exc:
        log.warning("job %s: infrastructure error, releasing for retry: %s", job_id, exc)
        return _release_or_fail(ctx, lease, exc)
    except Exception as exc:  # a bug or a library failure: not retryable by definition
        log.exception("job %s failed", job_id)
        _finish_failed(ctx, lease, jobs.error_object("training_error", f"{type(exc).__name__}: {exc}"))
        return "failed"
    finally:
        shutil.rmtree(workspace.root, ignore_errors=True)


def _finish_failed(ctx: WorkerContext, lease: Lease, error: dict[str, Any]) -> None:
    try:
        with ctx.db.write() as session:
            jobs.fail(session, lease, error)
    except LeaseLost:
        pass


def _release_or_fail(ctx: WorkerContext, lease: Lease, exc: InfrastructureError) -> str:
    try:
        with ctx.db.write() as session:
            job = jobs.get_any_project(session, lease.job_id)
            if job is not None and job.attempt >= job.max_attempts:
                jobs.fail(session, lease, jobs.error_object(exc.code, f"Gave up after {job.attempt} attempts: {exc}"))
                return "failed"
            jobs.release(session, lease, reason=f"{exc.code}: {exc}", counts_as_attempt=True)
        return "requeued"
    except (LeaseLost, InfrastructureError):
        # The reaper re-queues the job once its lease expires.
        return "lease-lost"


# ------------------------------------------------------------------------------------------ prepare
def _plan(ctx: WorkerContext, lease: Lease) -> tuple[JobPlan, File, File | None, Any]:
    with ctx.db.read() as session:
        job = jobs.get_any_project(session, lease.job_id)
        assert job is not None
        project_name = session.get(Project, job.project_id).name  # type: ignore[union-attr]
        # Files past their expiry stay readable for the jobs that use them (see db.files.take_expired).
        training = files.get(session, job.project_id, job.training_file_id, include_expired=True)
        validation = (files.get(session, job.project_id, job.validation_file_id, include_expired=True)
                      if job.validation_file_id else None)
        if training is None or training.status != FileStatus.PROCESSED:
            raise UserError("the training file is no longer available", code="file_not_found", param="training_file")
        if job.validation_file_id and (validation is None or validation.status != FileStatus.PROCESSED):
            raise UserError("the validation file is no longer available", code="file_not_found",
                            param="validation_file")
        latest = checkpoints.latest(session, job.id)
        assert training.data_format is not None
        plan = JobPlan(
            job_id=job.id,
            project_id=job.project_id,
            fine_tuned_model=models.fine_tuned_model_name(job.base_model, project_name, job.suffix, job.model_name_id),
            spec=TrainingSpec.for_job(base_model=job.base_model, method=job.method,
                                      hyperparameters=job.hyperparameters, seed=job.seed),
            data_format=training.data_format,
            training_file_id=training.id,
            training_file_sha256=training.sha256,
            has_validation=validation is not None,
            resume_step=latest.step_number if latest else None,
        )
        resume = (latest.storage_prefix, latest.manifest_sha256) if latest else None
        return plan, training, validation, resume


def _prepare(ctx: WorkerContext, workspace: Workspace, training: File, validation: File | None, resume: Any) -> None:
    """Download the verified inputs into the workspace, shared by every process of the attempt."""
    for file, target in ((training, workspace.training_data), (validation, workspace.validation_data)):
        if file is not None:
            ctx.store.download_file(file.storage_key, target, sha256=file.sha256, size=file.bytes)
    if resume is not None:
        prefix, manifest_sha256 = resume
        download_artifact(ctx.store, prefix, manifest_sha256, workspace.resume_dir, allowed_suffixes=CHECKPOINT_FILES)


# ------------------------------------------------------------------------------------------- train
def _run_claimed(ctx: WorkerContext, lease: Lease, keeper: LeaseKeeper, workspace: Workspace, preempt: Any) -> str:
    plan, training, validation, resume = _plan(ctx, lease)
    _prepare(ctx, workspace, training, validation, resume)
    keeper.check()
    if ctx.settings.training_processes > 1:
        outcome = _train_in_group(ctx, lease, plan, workspace, keeper, preempt)
    else:
        outcome = execute(ctx, lease, plan, workspace, DistributedContext.single(), preempt=preempt.is_set,
                          lease_alive=lambda: not keeper.lost.is_set(), device=_device())
    if outcome.status in ("stopped", "lease-lost"):
        return "stopped"
    if outcome.status == "paused":
        with ctx.db.write() as session:
            jobs.park(session, lease, step=outcome.step)
        return "paused"
    if outcome.status == "preempted":
        with ctx.db.write() as session:
            jobs.release(session, lease, reason=f"the worker is shutting down; checkpoint saved at step "
                         f"{outcome.step}, another worker will resume from it", counts_as_attempt=False)
        return "preempted"
    if outcome.stopped_early_at is not None:
        log_event(ctx, lease, f"Early stopping at step {outcome.stopped_early_at}: validation loss stopped "
                  f"improving; the model is the checkpoint at step {outcome.best_step}")
    elif outcome.best_step is not None:
        log_event(ctx, lease, f"The model is the checkpoint at step {outcome.best_step} (best validation loss)")
    _report_learning(ctx, lease, plan, outcome)
    assert outcome.adapter_dir is not None
    _publish_model(ctx, lease, plan, outcome)
    return "succeeded"


def _report_learning(ctx: WorkerContext, lease: Lease, plan: JobPlan, outcome: TrainingOutcome) -> None:
    """Events saying whether the run learned its data (worker.training.learning). The final pass is a message
    event carrying its figures as data (metrics events stay one per step); the results file shows the same
    figures in the last step's full_train_* columns (`_publish_model`)."""
    if outcome.learned_at_epoch is not None and outcome.learned_accuracy is not None:
        log_event(ctx, lease, learned_message(outcome.learned_at_epoch, plan.spec.n_epochs, outcome.learned_accuracy))
    if outcome.final_train_accuracy is None or outcome.final_train_loss is None:
        return
    message = final_pass_message(accuracy=outcome.final_train_accuracy, loss=outcome.final_train_loss,
                                 examples=outcome.final_pass_examples, total_examples=outcome.train_examples)
    with ctx.db.write() as session:
        jobs.heartbeat(session, lease, ttl=ctx.settings.lease_ttl_seconds)
        jobs.add_event(session, lease, message, data={"step": outcome.step, **_final_pass_columns(outcome)})
    warning = low_accuracy_warning(plan.spec, outcome.final_train_accuracy, outcome.train_examples)
    if warning is not None:
        log_event(ctx, lease, warning, level="warn")


def _final_pass_columns(outcome: TrainingOutcome) -> dict[str, float]:
    if outcome.final_train_accuracy is None or outcome.final_train_loss is None:
        return {}
    return {"full_train_loss": round(outcome.final_train_loss, 6),
            "full_train_mean_token_accuracy": round(outcome.final_train_accuracy, 6)}


def _device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _train_in_group(ctx: WorkerContext, lease: Lease, plan: JobPlan, workspace: Workspace, keeper: LeaseKeeper,
                    preempt: Any) -> TrainingOutcome:
    """Data-parallel training over `training_processes` processes started with torchrun."""
    launch_file = workspace.root / "launch.json"
    launch_file.write_text(json.dumps({
        "lease": {"job_id": lease.job_id, "project_id": lease.project_id, "owner": lease.owner, "token": lease.token,
                  "attempt": lease.attempt},
        "plan": plan.to_json(),
        "workspace": str(workspace.root),
    }))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={ctx.settings.training_processes}", "-m", "worker.jobs.launch", str(launch_file)]
    env = {**os.environ, **ctx.settings.child_environment()}
    process = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        while process.poll() is None:
            if preempt.is_set() and not workspace.preempt_flag.exists():
                workspace.preempt_flag.touch()  # the group's main process reads it after each step
            if keeper.lost.is_set():
                break  # the main process notices at its next fenced write and stops the group
            time.sleep(0.2)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    outcome, error = read_outcome(workspace)
    if error is not None:
        error_class = getattr(errors, error["class"], errors.FTaaSError)
        raise error_class(error["message"], code=error["code"], param=error["param"])
    if outcome is None:
        raise RuntimeError(f"the training processes exited with {process.returncode} without an outcome")
    return outcome


# ----------------------------------------------------------------------------------------- publish
def _publish_model(ctx: WorkerContext, lease: Lease, plan: JobPlan, outcome: TrainingOutcome) -> None:
    import peft
    import torch
    import transformers

    from worker.training.adapters import servable_summary

    assert outcome.adapter_dir is not None
    uid = ids.new_id(ids.MODEL_UID)
    prefix = layout.model_prefix(uid)
    published = publish_directory(ctx.store, prefix, outcome.adapter_dir, {
        "kind": "adapter",
        "model": plan.fine_tuned_model,
        "job_id": plan.job_id,
        "base_model": plan.spec.base_model,
        "adapter": servable_summary(outcome.adapter_dir),
        "training_spec": plan.spec.to_json(),
        "training_file": {"id": plan.training_file_id, "sha256": plan.training_file_sha256},
        "best_step": outcome.best_step,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "python": platform.python_version()},
    })
    from serving.adapters import AdapterRef
    from worker.evals.service import finish_for_job, run_for_job

    results_key = layout.results_key(plan.job_id, uid)
    evaluation = None
    try:
        evaluation = run_for_job(
            ctx, lease, model_name=plan.fine_tuned_model, base_model=plan.spec.base_model,
            adapter_ref=AdapterRef(prefix, published.manifest_sha256, plan.fine_tuned_model),
            tuned_info={"adapter_uri": prefix, "method": plan.spec.adapter.type,
                        "hyperparameters": plan.spec.to_json(), "epochs_completed": plan.spec.n_epochs})
        with ctx.db.read() as session:
            rows = events.metrics_rows(session, plan.job_id)
        if rows:
            rows[-1] = {**rows[-1], **_final_pass_columns(outcome)}
        stored = ctx.store.put_bytes(results_key, metrics_csv(rows))
    except BaseException:
        # Nothing points at these objects yet (all under keys of this attempt's own): remove them.
        _remove_unpublished(ctx, prefix, results_key, evaluation)
        raise
    results_id = ids.new_id(ids.FILE)
    try:
        with ctx.db.write() as session:
            files.insert(session, File(
                id=results_id, project_id=plan.project_id, filename="step_metrics.csv", purpose="fine-tune-results",
                bytes=stored.size, sha256=stored.sha256, storage_key=results_key, status=FileStatus.PROCESSED,
                created_at=int(time.time()), error_count=0,
            ))
            models.add(session, name=plan.fine_tuned_model, uid=uid, project_id=plan.project_id, job_id=plan.job_id,
                       base_model=plan.spec.base_model, storage_prefix=prefix,
                       manifest_sha256=published.manifest_sha256)
            result_files = [results_id]
            if evaluation is not None:
                jobs.heartbeat(session, lease, ttl=ctx.settings.lease_ttl_seconds)
                result_files += finish_for_job(session, lease, evaluation)
            jobs.complete(session, lease, fine_tuned_model=plan.fine_tuned_model, trained_tokens=outcome.trained_tokens,
                          result_files=result_files)
    except LeaseLost:
        # Cancelled (or re-claimed) during publication: nothing points at these objects, so remove them now.
        _remove_unpublished(ctx, prefix, results_key, evaluation)
        raise


def _remove_unpublished(ctx: WorkerContext, prefix: str, results_key: str, evaluation: Any) -> None:
    ctx.store.delete_prefix(prefix)
    ctx.store.delete(results_key)
    if evaluation is not None:
        for file_row in evaluation.file_rows:
            ctx.store.delete(file_row.storage_key)
