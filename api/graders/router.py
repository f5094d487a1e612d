"""Routes: POST /v1/fine_tuning/alpha/graders/validate and /run (`client.fine_tuning.alpha.graders.*`)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.dependencies import AuthenticatedCaller, Services
from contracts.graders import GraderHolder, GraderRunRequest

router = APIRouter(prefix="/v1/fine_tuning/alpha/graders", tags=["graders"])


@router.post("/validate")
async def validate_grader(body: GraderHolder, services: Services, caller: AuthenticatedCaller) -> Any:
    loop = asyncio.get_running_loop()
    return JSONResponse(await caller.run(lambda principal: services.graders.validate(principal, body, services.inference, loop)))


@router.post("/run")
async def run_grader(body: GraderRunRequest, services: Services, caller: AuthenticatedCaller) -> Any:
    loop = asyncio.get_running_loop()
    return JSONResponse(await caller.run(lambda principal: services.graders.run(principal, body, services.inference, loop)))
