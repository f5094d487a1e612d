"""Fine-tuned models owned by projects (base models come from settings, see basemodels.registry)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import checkpoints, jobs
from db.tables import AdapterOperation, Model, TrainingCheckpoint


def fine_tuned_model_name(base_model: str, project_name: str, suffix: str | None, name_id: str) -> str:
    """`ft:{base}:{project}:{suffix}:{id}`; the suffix segment is empty when there is none (as OpenAI does)."""
    return f"ft:{base_model}:{project_name}:{suffix or ''}:{name_id}"


def add(session: Session, *, name: str, uid: str, project_id: str, job_id: str | None, base_model: str,
        storage_prefix: str, manifest_sha256: str) -> Model:
    model = Model(
        id=name,
        uid=uid,
        project_id=project_id,
        job_id=job_id,
        base_model=base_model,
        storage_prefix=storage_prefix,
        manifest_sha256=manifest_sha256,
        created_at=int(time.time()),
    )
    session.add(model)
    session.flush()
    return model


def get(session: Session, project_id: str, name: str) -> Model | None:
    return session.scalar(select(Model).where(Model.id == name, Model.project_id == project_id))


def list_for_project(session: Session, project_id: str) -> list[Model]:
    return list(session.scalars(select(Model).where(Model.project_id == project_id).order_by(Model.created_at, Model.id)))


def provenance(session: Session, project_id: str, rows: list[Model]) -> dict[str, dict[str, str]]:
    """Where each of the project's models came from: its fine-tuning job, the training API checkpoint it was
    published from (the run and the tinker:// path), or the adapter operation that made it."""
    made: dict[str, dict[str, str]] = {row.id: {"type": "fine_tuning_job", "fine_tuning_job": row.job_id}
                                        for row in rows if row.job_id is not None}
    names = [row.id for row in rows if row.job_id is None]
    if names:
        for checkpoint in session.scalars(select(TrainingCheckpoint).where(
                TrainingCheckpoint.project_id == project_id, TrainingCheckpoint.served_model.in_(names))):
            assert checkpoint.served_model is not None
            made[checkpoint.served_model] = {"type": "training_api", "training_run": checkpoint.model_id,
                                             "checkpoint": checkpoint.path}
        for operation in session.scalars(select(AdapterOperation).where(
                AdapterOperation.project_id == project_id, AdapterOperation.result_model.in_(names))):
            assert operation.result_model is not None
            made[operation.result_model] = {"type": "adapter_operation", "adapter_operation": operation.id,
                                            "operation": operation.type}
    return made


def delete(session: Session, model: Model) -> None:
    session.delete(model)


@dataclass(frozen=True)
class AdapterLocation:
    """Where a fine-tuned model's or a checkpoint's adapter is stored, and the base model it belongs to."""

    name: str
    base_model: str
    storage_prefix: str
    manifest_sha256: str


def find_adapter(session: Session, project_id: str, name: str) -> AdapterLocation | None:
    """A fine-tuned model (`ft:...`) or a checkpoint (`...:ckpt-step-N`) of the project, by name."""
    row = get(session, project_id, name)
    if row is not None:
        return AdapterLocation(name, row.base_model, row.storage_prefix, row.manifest_sha256)
    checkpoint = checkpoints.by_model_name(session, project_id, name)
    if checkpoint is None:
        return None
    job = jobs.get(session, project_id, checkpoint.job_id)
    if job is None:
        return None
    return AdapterLocation(name, job.base_model, checkpoint.storage_prefix, checkpoint.manifest_sha256)
