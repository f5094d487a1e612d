"""Fine-tuned models owned by projects (base models come from settings, see basemodels.registry)."""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.tables import Model


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


def delete(session: Session, model: Model) -> None:
    session.delete(model)
