"""Routes: /v1/fine_tuning/jobs (OpenAI fine-tuning jobs API, plus pause/resume)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response

from api.dependencies import AuthenticatedCaller, CurrentCaller, Services
from api.fine_tuning.schemas import (
    CheckpointList,
    CheckpointObject,
    FineTuningJobList,
    FineTuningJobObject,
    JobCreateRequest,
    JobEventList,
    JobEventObject,
)
from api.pagination import cursor_query, list_page, metadata_filter
from api.responses import model_response
from db import ids
from db.pagination import Cursor

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

JobCursor = Annotated[Cursor, Depends(cursor_query(ids.JOB))]
EventCursor = Annotated[Cursor, Depends(cursor_query(ids.EVENT))]
CheckpointCursor = Annotated[Cursor, Depends(cursor_query(ids.CHECKPOINT, default_limit=10))]


@router.post("", response_model=FineTuningJobObject)
async def create_job(body: JobCreateRequest, services: Services, caller: AuthenticatedCaller,
                     idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None) -> Response:
    return await caller.run(lambda principal: model_response(
        FineTuningJobObject.of(services.jobs.create(principal, body, idempotency_key))))


@router.get("", response_model=FineTuningJobList)
async def list_jobs(request: Request, services: Services, caller: CurrentCaller, cursor: JobCursor) -> Response:
    metadata = metadata_filter(request.query_params.multi_items())
    return await list_page(caller, lambda principal: services.jobs.list(principal, cursor, metadata=metadata),
                           FineTuningJobObject.of)


@router.get("/{fine_tuning_job_id}", response_model=FineTuningJobObject)
async def retrieve_job(fine_tuning_job_id: str, services: Services, caller: CurrentCaller) -> Response:
    return await caller.run(lambda principal: model_response(
        FineTuningJobObject.of(services.jobs.get(principal, fine_tuning_job_id))))


@router.post("/{fine_tuning_job_id}/cancel", response_model=FineTuningJobObject)
async def cancel_job(fine_tuning_job_id: str, services: Services, caller: CurrentCaller) -> Response:
    return await caller.run(lambda principal: model_response(
        FineTuningJobObject.of(services.jobs.cancel(principal, fine_tuning_job_id))))


@router.post("/{fine_tuning_job_id}/pause", response_model=FineTuningJobObject)
async def pause_job(fine_tuning_job_id: str, services: Services, caller: CurrentCaller) -> Response:
    return await caller.run(lambda principal: model_response(
        FineTuningJobObject.of(services.jobs.pause(principal, fine_tuning_job_id))))


@router.post("/{fine_tuning_job_id}/resume", response_model=FineTuningJobObject)
async def resume_job(fine_tuning_job_id: str, services: Services, caller: CurrentCaller) -> Response:
    return await caller.run(lambda principal: model_response(
        FineTuningJobObject.of(services.jobs.resume(principal, fine_tuning_job_id))))


@router.get("/{fine_tuning_job_id}/events", response_model=JobEventList)
async def list_events(fine_tuning_job_id: str, services: Services, caller: CurrentCaller,
                      cursor: EventCursor) -> Response:
    return await list_page(caller, lambda principal: services.jobs.events(principal, fine_tuning_job_id, cursor),
                           JobEventObject.of)


@router.get("/{fine_tuning_job_id}/checkpoints", response_model=CheckpointList)
async def list_checkpoints(fine_tuning_job_id: str, services: Services, caller: CurrentCaller,
                           cursor: CheckpointCursor) -> Response:
    return await list_page(caller, lambda principal: services.jobs.checkpoints(principal, fine_tuning_job_id, cursor),
                           CheckpointObject.of)
