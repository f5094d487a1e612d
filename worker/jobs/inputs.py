"""What a claimed job trains on: its plan, read from the database, and its inputs, downloaded and verified
into the attempt's workspace (the training files, and the checkpoint it resumes from)."""

from __future__ import annotations

from typing import Any

from contracts.errors import UserError
from contracts.training.spec import TrainingSpec
from db import checkpoints, files, jobs, models
from db.leased import Lease
from db.states import FileStatus
from db.tables import File, Project
from storage.manifest import download_artifact
from worker.context import WorkerContext
from worker.jobs.execution import JobPlan, Workspace

#: Files a checkpoint may contain when it is downloaded to resume from (no pickles, ever).
CHECKPOINT_FILES = (".safetensors", ".json")


def plan_job(ctx: WorkerContext, lease: Lease) -> tuple[JobPlan, File, File | None, Any]:
    """The job's plan, its files, and the checkpoint to resume from (prefix, manifest SHA-256) if any.
    A file that is gone fails the job (a user error)."""
    with ctx.db.read() as session:
        job = jobs.get_any_project(session, lease.work_id)
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
            integrations=job.integrations,
        )
        resume = (latest.storage_prefix, latest.manifest_sha256) if latest else None
        return plan, training, validation, resume


def download_inputs(ctx: WorkerContext, workspace: Workspace, training: File, validation: File | None, resume: Any) -> None:
    """Download the verified inputs into the workspace, shared by every process of the attempt."""
    for file, target in ((training, workspace.training_data), (validation, workspace.validation_data)):
        if file is not None:
            ctx.store.download_file(file.storage_key, target, sha256=file.sha256, size=file.bytes)
    if resume is not None:
        prefix, manifest_sha256 = resume
        download_artifact(ctx.store, prefix, manifest_sha256, workspace.resume_dir, allowed_suffixes=CHECKPOINT_FILES)
