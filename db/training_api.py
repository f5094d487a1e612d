"""The training API's rows: sessions, training models (held by workers under a lease, db.leased), the futures
of requests to them, and the weights they saved.

Training requests to one model run in `seq_id` order (the SDK numbers them from 1 and may send a call's chunks
out of order); a request sent again with a seq_id already taken is the same request (the SDK retries with the
same seq_id), so `add_request` returns the existing one.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db import ids, outbox
from db.leased import LeasedQueue
from db.states import WorkStatus
from db.tables import TrainingCheckpoint, TrainingModel, TrainingRequest, TrainingSampler, TrainingSession

MODELS: LeasedQueue[TrainingModel] = LeasedQueue(TrainingModel, outbox.HOLD_TRAINING_MODEL, noun="training model",
                                                 param="model_id")
LIVE = (WorkStatus.QUEUED.value, WorkStatus.RUNNING.value)
PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"


# -------------------------------------------------------------------------------------------- sessions
def create_session(session: Session, project_id: str, *, tags: list[str] | None,
                   metadata: dict[str, Any] | None) -> TrainingSession:
    now = time.time()
    row = TrainingSession(id=ids.new_id(ids.TRAINING_SESSION), project_id=project_id, created_at=int(now),
                          active_at=now, tags=tags or None, user_metadata=metadata or None)
    session.add(row)
    session.flush()
    return row


def get_session(session: Session, project_id: str, session_id: str) -> TrainingSession | None:
    return session.scalar(select(TrainingSession).where(TrainingSession.id == session_id,
                                                        TrainingSession.project_id == project_id))


def sessions_active_at(session: Session, session_ids: list[str]) -> dict[str, float]:
    """When each of these sessions last saw a request or a heartbeat."""
    return dict(session.execute(select(TrainingSession.id, TrainingSession.active_at)
                                .where(TrainingSession.id.in_(session_ids))).tuples().all())


def sessions_page(session: Session, project_id: str, *, limit: int, offset: int) -> list[TrainingSession]:
    """A project's sessions, newest first."""
    return list(session.scalars(select(TrainingSession).where(TrainingSession.project_id == project_id).order_by(
        TrainingSession.created_at.desc(), TrainingSession.id.desc()).limit(limit).offset(offset)))


def samplers_of_session(session: Session, session_id: str) -> list[TrainingSampler]:
    return list(session.scalars(select(TrainingSampler).where(TrainingSampler.session_id == session_id)
                                .order_by(TrainingSampler.created_at, TrainingSampler.id)))


def touch_session(session: Session, session_id: str) -> None:
    """A heartbeat or a request: the session's models are in use."""
    session.execute(update(TrainingSession).where(TrainingSession.id == session_id).values(active_at=time.time()))


def finish_session(session: Session, session_id: str) -> None:
    session.execute(update(TrainingSession).where(TrainingSession.id == session_id,
                                                  TrainingSession.finished_at.is_(None))
                    .values(finished_at=int(time.time())))


# ---------------------------------------------------------------------------------------------- models
def live_models(session: Session, project_id: str) -> int:
    return session.scalar(select(func.count()).select_from(TrainingModel).where(
        TrainingModel.project_id == project_id, TrainingModel.status.in_(LIVE))) or 0


def add_model(session: Session, row: TrainingModel) -> None:
    """A new training model, announced to the workers (one of them loads and holds it)."""
    MODELS.insert(session, row, dispatch=True)


def get_model(session: Session, project_id: str, model_id: str) -> TrainingModel | None:
    return MODELS.get(session, project_id, model_id)


def models_of_session(session: Session, session_id: str) -> list[TrainingModel]:
    return list(session.scalars(select(TrainingModel).where(TrainingModel.session_id == session_id)))


def models_page(session: Session, project_id: str, *, limit: int, offset: int) -> tuple[list[TrainingModel], int]:
    """A project's training models (its training runs), newest first, and how many it has in all."""
    where = TrainingModel.project_id == project_id
    total = session.scalar(select(func.count()).select_from(TrainingModel).where(where)) or 0
    page = session.scalars(select(TrainingModel).where(where).order_by(TrainingModel.created_at.desc(),
                                                                       TrainingModel.id.desc())
                           .limit(limit).offset(offset))
    return list(page), total


# -------------------------------------------------------------------------------------------- requests
def add_request(session: Session, *, project_id: str, kind: str, payload: bytes, model_id: str | None = None,
                seq_id: int | None = None, result: tuple[str, bytes] | None = None) -> TrainingRequest:
    """A new future (or, for a training request whose seq_id the model already has, that one). `result`:
    (format, bytes) of a request answered at once."""
    if model_id is not None and seq_id is not None:
        existing = request_at(session, model_id, seq_id)
        if existing is not None:
            return existing
    now = time.time()
    row = TrainingRequest(id=ids.new_id(ids.TRAINING_REQUEST), project_id=project_id, model_id=model_id, kind=kind,
                          seq_id=seq_id, status=PENDING, payload=payload, created_at=now)
    if result is not None:
        row.status, row.result_format, row.result, row.finished_at = SUCCEEDED, result[0], result[1], now
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:  # the same seq_id, sent twice at once: the first one stands
        found = request_at(session, model_id, seq_id) if model_id is not None and seq_id is not None else None
        if found is None:
            raise
        return found
    return row


def request_at(session: Session, model_id: str, seq_id: int) -> TrainingRequest | None:
    """The model's request numbered `seq_id`, whatever its state."""
    return session.scalar(select(TrainingRequest).where(TrainingRequest.model_id == model_id,
                                                        TrainingRequest.seq_id == seq_id))


def get_request(session: Session, project_id: str, request_id: str) -> TrainingRequest | None:
    return session.scalar(select(TrainingRequest).where(TrainingRequest.id == request_id,
                                                        TrainingRequest.project_id == project_id))


def next_request(session: Session, model_id: str, after_seq_id: int) -> TrainingRequest | None:
    """The model's next training request in seq_id order, once it has arrived (a later one waits for it)."""
    return session.scalar(select(TrainingRequest).where(
        TrainingRequest.model_id == model_id, TrainingRequest.seq_id == after_seq_id + 1,
        TrainingRequest.status == PENDING))


def first_request(session: Session, model_id: str, kind: str) -> TrainingRequest | None:
    return session.scalar(select(TrainingRequest).where(TrainingRequest.model_id == model_id,
                                                        TrainingRequest.kind == kind,
                                                        TrainingRequest.seq_id.is_(None)))


def finish_request(session: Session, request_id: str, *, result: tuple[str, bytes] | None = None,
                   error: dict[str, Any] | None = None) -> None:
    values: dict[str, Any] = {"status": FAILED if error else SUCCEEDED, "finished_at": time.time(), "error": error}
    if result is not None:
        values["result_format"], values["result"] = result
    session.execute(update(TrainingRequest).where(TrainingRequest.id == request_id,
                                                  TrainingRequest.status == PENDING).values(**values))


def fail_pending(session: Session, model_id: str, error: dict[str, Any]) -> int:
    """Every request still pending on a model that will not run them."""
    result = session.execute(update(TrainingRequest).where(TrainingRequest.model_id == model_id,
                                                           TrainingRequest.status == PENDING)
                             .values(status=FAILED, finished_at=time.time(), error=error))
    return int(getattr(result, "rowcount", 0) or 0)


# ----------------------------------------------------------------------------------------- checkpoints
def add_checkpoint(session: Session, row: TrainingCheckpoint) -> None:
    session.add(row)
    session.flush()


def get_checkpoint(session: Session, project_id: str, path: str) -> TrainingCheckpoint | None:
    return session.scalar(select(TrainingCheckpoint).where(TrainingCheckpoint.project_id == project_id,
                                                           TrainingCheckpoint.path == path))


def checkpoints_of(session: Session, project_id: str, model_id: str) -> list[TrainingCheckpoint]:
    """A training model's checkpoints, oldest first."""
    return checkpoints_of_models(session, project_id, [model_id]).get(model_id, [])


def checkpoints_of_models(session: Session, project_id: str,
                          model_ids: list[str]) -> dict[str, list[TrainingCheckpoint]]:
    """The checkpoints of each of these training models, oldest first, in one query."""
    found: dict[str, list[TrainingCheckpoint]] = {}
    for row in session.scalars(select(TrainingCheckpoint).where(
            TrainingCheckpoint.project_id == project_id, TrainingCheckpoint.model_id.in_(model_ids))
            .order_by(TrainingCheckpoint.created_at, TrainingCheckpoint.id)):
        found.setdefault(row.model_id, []).append(row)
    return found


def checkpoints_page(session: Session, project_id: str, *, limit: int,
                     offset: int) -> tuple[list[TrainingCheckpoint], int]:
    """A project's checkpoints, newest first, and how many it has in all."""
    where = TrainingCheckpoint.project_id == project_id
    total = session.scalar(select(func.count()).select_from(TrainingCheckpoint).where(where)) or 0
    page = session.scalars(select(TrainingCheckpoint).where(where).order_by(
        TrainingCheckpoint.created_at.desc(), TrainingCheckpoint.id.desc()).limit(limit).offset(offset))
    return list(page), total


def delete_checkpoint(session: Session, row: TrainingCheckpoint) -> None:
    session.delete(row)
    session.flush()


# -------------------------------------------------------------------------------------------- samplers
def add_sampler(session: Session, row: TrainingSampler) -> TrainingSampler:
    """A sampling session (the same id again: the one already made, as the SDK may retry)."""
    existing = session.get(TrainingSampler, row.id)
    if existing is not None:
        return existing
    session.add(row)
    session.flush()
    return row


def get_sampler(session: Session, project_id: str, sampler_id: str) -> TrainingSampler | None:
    return session.scalar(select(TrainingSampler).where(TrainingSampler.id == sampler_id,
                                                        TrainingSampler.project_id == project_id))
