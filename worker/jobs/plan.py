"""A claimed job's plan: what the runner reads from the database before training (the spec, the files, the
checkpoint to resume from), serialisable so that every process of a data-parallel group gets the same."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from contracts.errors import UserError
from contracts.training.spec import TrainingSpec
from db import checkpoints, files, jobs, models
from db.leased import Lease
from db.states import FileStatus
from db.tables import File, Project
from worker.context import WorkerContext


@dataclass(frozen=True)
class JobPlan:
    """What the runner read from the database before training (serialisable for other processes)."""

    job_id: str
    project_id: str
    fine_tuned_model: str
    spec: TrainingSpec
    data_format: str
    training_file_id: str
    training_file_sha256: str
    has_validation: bool
    #: Step of the checkpoint to resume from (downloaded into the workspace), if any.
    resume_step: int | None
    #: experiment trackers, as stored on the job (contracts.training.integrations)
    integrations: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["spec"] = self.spec.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobPlan:
        return cls(**{**data, "spec": TrainingSpec.from_json(data["spec"])})


def plan_job(ctx: WorkerContext, lease: Lease) -> tuple[JobPlan, File, File | None, Any]:
    """The job's plan, its files, and the checkpoint to resume from (prefix, manifest SHA-256) if any.
    A file that is gone fails the job (a user error)."""
    with ctx.db.read() as session:
        job = jobs.get_any_project(session, lease.work_id)
        assert job is not None
        project = session.get(Project, job.project_id)
        assert project is not None  # a job's project outlives it (ON DELETE CASCADE)
        project_name = project.name
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
