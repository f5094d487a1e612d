"""Routes: /v1/fine_tuning/jobs (OpenAI fine-tuning jobs API, plus pause/resume)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response

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
from api.pagination import check_cursor, check_limit
from api.responses import list_response, model_response
from contracts.errors import InvalidRequest
from db import ids

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

_METADATA_PARAM = re.compile(r"^metadata\[(.+)\]$")


@router.post("", response_model=FineTuningJobObject)
async def create_job(body: JobCreateRequest, services: Services, caller: AuthenticatedCaller,
                     idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None) -> Response:
    return await caller.run(lambda principal: model_response(
        FineTuningJobObject.of(services.jobs.create(principal, body, idempotency_key))))


@router.get("", response_model=FineTuningJobList)
async def list_jobs(request: Request, services: Services, caller: CurrentCaller,
                    after: str | None = None, limit: int = 20) -> Response:
    metadata = {}
    for name, value in request.query_params.multi_items():
        if match := _METADATA_PARAM.match(name):
            metadata[match.group(1)] = value
        elif name.startswith("metadata"):
            raise InvalidRequest("Filter on metadata as metadata[key]=value.", param=name)
    after, limit = check_cursor(after, ids.JOB), check_limit(limit, maximum=100)

    def work(principal):  # type: ignore[no-untyped-def]
        page = services.jobs.list(principal, after=after, limit=limit, metadata=metadata)
        return list_response([FineTuningJobObject.of(job) for job in page.items], has_more=page.has_more)

    return await caller.run(work)


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
                      after: str | None = None, limit: int = 20) -> Response:
    after, limit = check_cursor(after, ids.EVENT), check_limit(limit, maximum=100)

    def work(principal):  # type: ignore[no-untyped-def]
        page = services.jobs.events(principal, fine_tuning_job_id, after=after, limit=limit)
        return list_response([JobEventObject.of(e) for e in page.items], has_more=page.has_more)

    return await caller.run(work)


@router.get("/{fine_tuning_job_id}/checkpoints", response_model=CheckpointList)
async def list_checkpoints(fine_tuning_job_id: str, services: Services, caller: CurrentCaller,
                           after: str | None = None, limit: int = 10) -> Response:
    after, limit = check_cursor(after, ids.CHECKPOINT), check_limit(limit, maximum=100)

    def work(principal):  # type: ignore[no-untyped-def]
        page = services.jobs.checkpoints(principal, fine_tuning_job_id, after=after, limit=limit)
        return list_response([CheckpointObject.of(c) for c in page.items], has_more=page.has_more)

    return await caller.run(work)
