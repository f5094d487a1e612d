"""Routes: /v1/fine_tuning/jobs (OpenAI fine-tuning jobs API, plus pause/resume)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Request

from api.dependencies import CurrentPrincipal, Services
from api.fine_tuning.schemas import (
    CheckpointList,
    CheckpointObject,
    FineTuningJobList,
    FineTuningJobObject,
    JobCreateRequest,
    JobEventList,
    JobEventObject,
)
from api.pagination import check_cursor, check_limit, list_envelope
from db import ids
from ftaas.errors import InvalidRequest

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

_METADATA_PARAM = re.compile(r"^metadata\[(.+)\]$")


@router.post("", response_model=FineTuningJobObject)
def create_job(body: JobCreateRequest, services: Services, principal: CurrentPrincipal,
               idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None) -> FineTuningJobObject:
    return FineTuningJobObject.of(services.jobs.create(principal, body, idempotency_key))


@router.get("", response_model=FineTuningJobList)
def list_jobs(request: Request, services: Services, principal: CurrentPrincipal,
              after: str | None = None, limit: int = 20) -> dict:
    metadata = {}
    for name, value in request.query_params.multi_items():
        if match := _METADATA_PARAM.match(name):
            metadata[match.group(1)] = value
        elif name.startswith("metadata"):
            raise InvalidRequest("Filter on metadata as metadata[key]=value.", param=name)
    page = services.jobs.list(principal, after=check_cursor(after, ids.JOB), limit=check_limit(limit, maximum=100),
                              metadata=metadata)
    return list_envelope([FineTuningJobObject.of(job).model_dump() for job in page.items], has_more=page.has_more)


@router.get("/{fine_tuning_job_id}", response_model=FineTuningJobObject)
def retrieve_job(fine_tuning_job_id: str, services: Services, principal: CurrentPrincipal) -> FineTuningJobObject:
    return FineTuningJobObject.of(services.jobs.get(principal, fine_tuning_job_id))


@router.post("/{fine_tuning_job_id}/cancel", response_model=FineTuningJobObject)
def cancel_job(fine_tuning_job_id: str, services: Services, principal: CurrentPrincipal) -> FineTuningJobObject:
    return FineTuningJobObject.of(services.jobs.cancel(principal, fine_tuning_job_id))


@router.post("/{fine_tuning_job_id}/pause", response_model=FineTuningJobObject)
def pause_job(fine_tuning_job_id: str, services: Services, principal: CurrentPrincipal) -> FineTuningJobObject:
    return FineTuningJobObject.of(services.jobs.pause(principal, fine_tuning_job_id))


@router.post("/{fine_tuning_job_id}/resume", response_model=FineTuningJobObject)
def resume_job(fine_tuning_job_id: str, services: Services, principal: CurrentPrincipal) -> FineTuningJobObject:
    return FineTuningJobObject.of(services.jobs.resume(principal, fine_tuning_job_id))


@router.get("/{fine_tuning_job_id}/events", response_model=JobEventList)
def list_events(fine_tuning_job_id: str, services: Services, principal: CurrentPrincipal,
                after: str | None = None, limit: int = 20) -> dict:
    page = services.jobs.events(principal, fine_tuning_job_id, after=check_cursor(after, ids.EVENT),
                                limit=check_limit(limit, maximum=100))
    return list_envelope([JobEventObject.of(e).model_dump() for e in page.items], has_more=page.has_more)


@router.get("/{fine_tuning_job_id}/checkpoints", response_model=CheckpointList)
def list_checkpoints(fine_tuning_job_id: str, services: Services, principal: CurrentPrincipal,
                     after: str | None = None, limit: int = 10) -> dict:
    page = services.jobs.checkpoints(principal, fine_tuning_job_id, after=check_cursor(after, ids.CHECKPOINT),
                                     limit=check_limit(limit, maximum=100))
    return list_envelope([CheckpointObject.of(c).model_dump() for c in page.items], has_more=page.has_more)
