"""Committed training checkpoints of a job, newest first; each is servable as `<model>:ckpt-step-N`."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import ids
from db.pagination import Cursor, Page, fetch_page
from db.tables import Checkpoint


def checkpoint_model_name(fine_tuned_model: str, step: int) -> str:
    return f"{fine_tuned_model}:ckpt-step-{step}"


def add(session: Session, *, job_id: str, project_id: str, step_number: int, metrics: dict[str, Any],
        model_name: str, storage_prefix: str, manifest_sha256: str) -> Checkpoint:
    """Register a checkpoint whose files and manifest are already committed to the store."""
    checkpoint = Checkpoint(
        id=ids.new_id(ids.CHECKPOINT),
        job_id=job_id,
        project_id=project_id,
        step_number=step_number,
        metrics=metrics,
        model_name=model_name,
        storage_prefix=storage_prefix,
        manifest_sha256=manifest_sha256,
        created_at=int(time.time()),
    )
    session.add(checkpoint)
    session.flush()
    return checkpoint


def list_page(session: Session, project_id: str, job_id: str, cursor: Cursor) -> Page[Checkpoint]:
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.project_id == project_id)
    return fetch_page(session, stmt, Checkpoint.id, cursor)


def latest(session: Session, job_id: str) -> Checkpoint | None:
    return session.scalar(
        select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step_number.desc()).limit(1)
    )


def by_step(session: Session, job_id: str, step: int) -> Checkpoint | None:
    return session.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step_number == step))


def by_model_name(session: Session, project_id: str, model_name: str) -> Checkpoint | None:
    return session.scalar(
        select(Checkpoint).where(Checkpoint.model_name == model_name, Checkpoint.project_id == project_id)
    )


def prune(session: Session, job_id: str, *, keep: int, pin_best: bool = False) -> list[str]:
    """Drop all but the newest `keep` checkpoints (and, with `pin_best`, the one with the lowest full
    validation loss, which early stopping makes the model); returns the storage prefixes to delete after
    commit."""
    rows = list(
        session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step_number.desc()))
    )
    pinned = None
    if pin_best:
        scored = [r for r in rows if r.metrics.get("full_valid_loss") is not None]
        pinned = min(scored, key=lambda r: (r.metrics["full_valid_loss"], r.step_number)) if scored else None
    prefixes = []
    for stale in rows[keep:]:
        if stale is pinned:
            continue
        prefixes.append(stale.storage_prefix)
        session.delete(stale)
    return prefixes
