"""Run one fine-tuning job: claim it, train, publish checkpoints and the model, finish it.

The database is the truth and the Celery message only a wake-up call. The claim is a conditional
update that one delivery wins; every later write is fenced by the claim's token, so a duplicate or stale
delivery does nothing, and a cancelled job's worker notices at its next step and stops.

Failure handling follows the error taxonomy: a user error (bad data, unsupported template) fails the
job at once; an infrastructure error releases it to the queue, counting an attempt; a lost lease means
someone else owns the job now, so the worker stops quietly.
"""

from __future__ import annotations

import logging
import platform
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db import checkpoints, events, files, ids, jobs, models
from db.jobs import Lease
from db.states import FileStatus, JobStatus
from db.tables import File, Project
from ftaas.errors import InfrastructureError, IntegrityFailure, LeaseLost, UserError
from storage import layout
from storage.manifest import download_artifact, publish_directory
from worker.context import WorkerContext
from worker.jobs.lease import LeaseKeeper
from worker.jobs.results import metrics_csv
from worker.training.spec import TrainingSpec

log = logging.getLogger(__name__)

#: Files a checkpoint may contain when it is downloaded to resume from (no pickles, ever).
CHECKPOINT_FILES = (".safetensors", ".json")
ESTIMATE_EVERY_SECONDS = 5.0


@dataclass(frozen=True)
class JobPlan:
    """Everything read from the database before training starts."""

    job_id: str
    project_id: str
    spec: TrainingSpec
    fine_tuned_model: str
    training_file: File
    validation_file: File | None
    data_format: str
    resume_checkpoint: tuple[str, str, int] | None  # (prefix, manifest sha256, step)


def run_job(ctx: WorkerContext, job_id: str) -> str:
    """Returns what happened: not-claimed, succeeded, paused, stopped, failed, requeued or lease-lost."""
    with ctx.db.write() as session:
        lease = jobs.claim(session, job_id, owner=ctx.owner, ttl=ctx.settings.lease_ttl_seconds)
    if lease is None:
        return "not-claimed"
    work_dir = ctx.work_dir / f"{job_id}-{lease.token}-{uuid.uuid4().hex[:8]}"
    try:
        with LeaseKeeper(ctx.db, lease, ctx.settings.lease_ttl_seconds) as keeper:
            return _run_claimed(ctx, lease, keeper, work_dir)
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
        shutil.rmtree(work_dir, ignore_errors=True)


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


def _plan(ctx: WorkerContext, lease: Lease) -> JobPlan:
    with ctx.db.read() as session:
        job = jobs.get_any_project(session, lease.job_id)
        assert job is not None
        project_name = session.get(Project, job.project_id).name  # type: ignore[union-attr]
        training = files.get(session, job.project_id, job.training_file_id, include_expired=True)
        validation = (files.get(session, job.project_id, job.validation_file_id, include_expired=True)
                      if job.validation_file_id else None)
        if training is None or training.status != FileStatus.PROCESSED:
            raise UserError("the training file is no longer available", code="file_not_found", param="training_file")
        if job.validation_file_id and (validation is None or validation.status != FileStatus.PROCESSED):
            raise UserError("the validation file is no longer available", code="file_not_found",
                            param="validation_file")
        latest = checkpoints.latest(session, job.id)
        name = models.fine_tuned_model_name(job.base_model, project_name, job.suffix, job.model_name_id)
        assert training.data_format is not None
        return JobPlan(
            job_id=job.id,
            project_id=job.project_id,
            spec=TrainingSpec.for_job(base_model=job.base_model, method=job.method,
                                      hyperparameters=job.hyperparameters, seed=job.seed),
            fine_tuned_model=name,
            training_file=training,
            validation_file=validation,
            data_format=training.data_format,
            resume_checkpoint=(latest.storage_prefix, latest.manifest_sha256, latest.step_number) if latest else None,
        )


def _read_lines(ctx: WorkerContext, file: File) -> list[str]:
    data = ctx.store.get_bytes(file.storage_key, sha256=file.sha256, size=file.bytes)
    return data.decode("utf-8-sig").splitlines()


def _event(ctx: WorkerContext, lease: Lease, message: str, *, level: str = "info") -> None:
    with ctx.db.write() as session:
        jobs.heartbeat(session, lease, ttl=ctx.settings.lease_ttl_seconds)
        jobs.add_event(session, lease, message, level=level)


def _run_claimed(ctx: WorkerContext, lease: Lease, keeper: LeaseKeeper, work_dir: Path) -> str:
    # Imported here so that the default-queue worker (file validation) never loads torch.
    from worker.training.data import encode_lines
    from worker.training.trainer import Trainer

    plan = _plan(ctx, lease)
    tokenizer = ctx.loader.load_tokenizer(plan.spec.base_model)
    train = encode_lines(_read_lines(ctx, plan.training_file), plan.data_format, tokenizer, plan.spec.max_seq_len)
    for warning in train.warnings:
        _event(ctx, lease, f"Training file: {warning}", level="warn")
    valid_examples: list[Any] = []
    if plan.validation_file is not None:
        valid = encode_lines(_read_lines(ctx, plan.validation_file), plan.data_format, tokenizer, plan.spec.max_seq_len)
        for warning in valid.warnings:
            _event(ctx, lease, f"Validation file: {warning}", level="warn")
        valid_examples = valid.examples
    if not train.examples:
        raise UserError("no training example has any trainable token left after truncation",
                        code="invalid_training_file", param="training_file")
    keeper.check()

    resume_dir = None
    if plan.resume_checkpoint is not None:
        prefix, manifest_sha256, step = plan.resume_checkpoint
        resume_dir = work_dir / f"resume-step-{step}"
        download_artifact(ctx.store, prefix, manifest_sha256, resume_dir, allowed_suffixes=CHECKPOINT_FILES)
        _event(ctx, lease, f"Resuming from the checkpoint at step {step}")

    model = ctx.loader.load_model(plan.spec.base_model)
    control = JobControl(ctx, lease, keeper, plan)
    trainer = Trainer(plan.spec, model, tokenizer, train.examples, valid_examples, control, work_dir / "trainer")
    outcome = trainer.run(resume_dir)
    if outcome.status == "stopped":
        return "stopped"
    if outcome.status == "paused":
        with ctx.db.write() as session:
            jobs.park(session, lease, step=outcome.step)
        return "paused"
    assert outcome.adapter_dir is not None
    _publish_model(ctx, lease, plan, outcome.adapter_dir, outcome.trained_tokens)
    return "succeeded"


class JobControl:
    """The trainer's view of the job: metrics events, pause/cancel, checkpoints, estimated finish."""

    def __init__(self, ctx: WorkerContext, lease: Lease, keeper: LeaseKeeper, plan: JobPlan) -> None:
        self.ctx = ctx
        self.lease = lease
        self.keeper = keeper
        self.plan = plan
        self._started = time.monotonic()
        self._first_step: int | None = None
        self._last_estimate = 0.0

    def after_step(self, metrics: Any) -> Any:
        from worker.training.trainer import Directive

        self.keeper.check()
        now = time.monotonic()
        if self._first_step is None:
            self._first_step = metrics.step - 1
        values: dict[str, Any] = {}
        if now - self._last_estimate >= ESTIMATE_EVERY_SECONDS or metrics.step == self._first_step + 1:
            per_step = (now - self._started) / max(1, metrics.step - self._first_step)
            values["estimated_finish"] = int(time.time() + per_step * (metrics.total_steps - metrics.step))
            self._last_estimate = now
        data = metrics.as_event_data()
        message = f"Step {metrics.step}/{metrics.total_steps}: training loss={metrics.train_loss:.4f}"
        if metrics.valid_loss is not None:
            message += f", validation loss={metrics.valid_loss:.4f}"
        if metrics.full_valid_loss is not None:
            message += f", full validation loss={metrics.full_valid_loss:.4f}"
        with self.ctx.db.write() as session:
            status = jobs.heartbeat(session, self.lease, ttl=self.ctx.settings.lease_ttl_seconds, values=values)
            jobs.add_event(session, self.lease, message, type="metrics", data=data)
        return Directive.PAUSE if status == JobStatus.PAUSING else Directive.CONTINUE

    def on_checkpoint(self, state_dir: Path, metrics: Any) -> None:
        step = metrics.step
        prefix = layout.checkpoint_prefix(self.lease.job_id, step)
        published = publish_directory(self.ctx.store, prefix, state_dir, {
            "kind": "checkpoint",
            "job_id": self.lease.job_id,
            "base_model": self.plan.spec.base_model,
            "step": step,
            "training_spec": self.plan.spec.to_json(),
            "metrics": metrics.as_event_data(),
        })
        with self.ctx.db.write() as session:
            jobs.heartbeat(session, self.lease, ttl=self.ctx.settings.lease_ttl_seconds)
            existing = checkpoints.by_step(session, self.lease.job_id, step)
            if existing is None:
                checkpoints.add(session, job_id=self.lease.job_id, project_id=self.lease.project_id, step_number=step,
                                metrics=metrics.as_event_data(),
                                model_name=checkpoints.checkpoint_model_name(self.plan.fine_tuned_model, step),
                                storage_prefix=prefix, manifest_sha256=published.manifest_sha256)
            else:
                # A resumed attempt re-saved this step: identical state, keep pointing at the new manifest.
                existing.manifest_sha256 = published.manifest_sha256
            stale = checkpoints.prune(session, self.lease.job_id, keep=self.ctx.settings.keep_checkpoints)
        for stale_prefix in stale:
            self.ctx.store.delete_prefix(stale_prefix)
        shutil.rmtree(state_dir, ignore_errors=True)


def _publish_model(ctx: WorkerContext, lease: Lease, plan: JobPlan, adapter_dir: Path, trained_tokens: int) -> None:
    import peft
    import torch
    import transformers

    uid = ids.new_id(ids.MODEL_UID)
    prefix = layout.model_prefix(uid)
    published = publish_directory(ctx.store, prefix, adapter_dir, {
        "kind": "adapter",
        "model": plan.fine_tuned_model,
        "job_id": plan.job_id,
        "base_model": plan.spec.base_model,
        "training_spec": plan.spec.to_json(),
        "training_file": {"id": plan.training_file.id, "sha256": plan.training_file.sha256},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "python": platform.python_version()},
    })
    with ctx.db.read() as session:
        rows = events.metrics_rows(session, plan.job_id)
    csv_bytes = metrics_csv(rows)
    results_key = layout.results_key(plan.job_id)
    stored = ctx.store.put_bytes(results_key, csv_bytes)
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
            jobs.complete(session, lease, fine_tuned_model=plan.fine_tuned_model, trained_tokens=trained_tokens,
                          result_files=[results_id])
    except LeaseLost:
        # Cancelled during publication: nothing points at these objects, so remove them now.
        ctx.store.delete_prefix(prefix)
        ctx.store.delete(results_key)
        raise
