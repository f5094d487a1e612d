"""Validating a grader and running it on one sample, for the grader-testing routes."""

from __future__ import annotations

import asyncio
from typing import Any

from contracts.graders import GraderHolder, GraderRunRequest
from contracts.inference.backend import InferenceBackend
from contracts.settings import GraderSettings
from db.projects import Principal
from graders import grading
from graders.deployment import EngineEndpoint, grading_context
from graders.samples import Sample


class GraderService:
    """Blocking; run in the API's request thread pool. `inference` is this process's engine where it serves
    models (it answers model graders when no external grader endpoint is configured); `loop` delivers its
    events."""

    def __init__(self, settings: GraderSettings) -> None:
        self._settings = settings

    def _context(self, principal: Principal, inference: InferenceBackend | None,
                 loop: asyncio.AbstractEventLoop) -> grading.GradingContext:
        engine = EngineEndpoint(inference, principal, loop) if inference is not None else None
        return grading_context(self._settings, engine=engine)

    def validate(self, principal: Principal, body: GraderHolder, inference: InferenceBackend | None,
                 loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
        """OpenAI's validate response: the grader as understood; InvalidRequest when it cannot run here."""
        context = self._context(principal, inference, loop)
        try:
            grading.check(body.grader, context)
        finally:
            context.close()
        return {"grader": body.grader.model_dump(mode="json", exclude_none=True)}

    def run(self, principal: Principal, body: GraderRunRequest, inference: InferenceBackend | None,
            loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
        """OpenAI's run response for `body.model_sample` graded against `body.item`."""
        context = self._context(principal, inference, loop)
        try:
            grading.check(body.grader, context)
            item = body.item if isinstance(body.item, dict) else {}
            result = grading.grade(body.grader, [Sample(body.model_sample)], [item], context)[0]
        finally:
            context.close()
        return result.response()
