"""Routes: /v1/knowledge_evals (create, list, retrieve, cancel, report/items/chart downloads), the built-in
suites, and training files made from a suite's memorization split."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import StreamingResponse

from api.dependencies import AuthenticatedCaller, CurrentCaller, Services
from api.files.schemas import FileObject
from api.knowledge_evals.schemas import (
    KnowledgeEvalCreateRequest,
    KnowledgeEvalList,
    KnowledgeEvalObject,
    SuiteObject,
    TrainingFileRequest,
)
from api.pagination import cursor_query, list_page, static_list
from api.responses import model_response
from db import ids
from db.pagination import Cursor
from evals.artifacts import RESULT_FILES

router = APIRouter(prefix="/v1/knowledge_evals", tags=["knowledge-evals"])
EvalCursor = Annotated[Cursor, Depends(cursor_query(ids.KNOWLEDGE_EVAL))]


@router.post("", response_model=KnowledgeEvalObject)
async def create_eval(body: KnowledgeEvalCreateRequest, services: Services, caller: AuthenticatedCaller) -> Response:
    return await caller.run(lambda principal: model_response(
        KnowledgeEvalObject.of(services.knowledge_evals.create(principal, body))))


@router.get("", response_model=KnowledgeEvalList)
async def list_evals(services: Services, caller: CurrentCaller, cursor: EvalCursor) -> Response:
    return await list_page(caller, lambda principal: services.knowledge_evals.list(principal, cursor),
                           KnowledgeEvalObject.of)


@router.get("/suites", response_model=list[SuiteObject])
async def list_suites(services: Services, caller: CurrentCaller) -> Response:
    return await caller.run(lambda principal: static_list(services.knowledge_evals.suites()))


@router.post("/training_files", response_model=FileObject)
async def create_training_file(body: TrainingFileRequest, services: Services, caller: AuthenticatedCaller) -> Response:
    return await caller.run(lambda principal: model_response(FileObject.of(
        services.knowledge_evals.training_file(principal, body.suite, body.system_prompt))))


@router.get("/{knowledge_eval_id}", response_model=KnowledgeEvalObject)
async def retrieve_eval(knowledge_eval_id: str, services: Services, caller: CurrentCaller) -> Response:
    return await caller.run(lambda principal: model_response(
        KnowledgeEvalObject.of(services.knowledge_evals.get(principal, knowledge_eval_id))))


@router.post("/{knowledge_eval_id}/cancel", response_model=KnowledgeEvalObject)
async def cancel_eval(knowledge_eval_id: str, services: Services, caller: CurrentCaller) -> Response:
    return await caller.run(lambda principal: model_response(
        KnowledgeEvalObject.of(services.knowledge_evals.cancel(principal, knowledge_eval_id))))


#: What each result file of an eval holds (its route's description); the names: evals.artifacts.
RESULTS = {
    "report": "The report JSON (schema urn:ftservice:knowledge-eval-report:v1; a comparison's: docs/evals.md).",
    "items": "Per-item JSONL: prompt, reference, both models' raw responses and verdicts.",
    "spec": "The spec that was run.",
    "chart": "Base-vs-tuned accuracy per split (PNG).",
    "comparison_chart": "A comparison's rates with their intervals (PNG; comparisons only).",
    "loss_curve": "The training loss of the job that made the evaluated model (PNG), when there is one.",
}
assert RESULTS.keys() == RESULT_FILES.keys()

Download = Callable[[str, Services, CurrentCaller], Coroutine[Any, Any, StreamingResponse]]


def _download_route(kind: str) -> Download:
    async def download(knowledge_eval_id: str, services: Services, caller: CurrentCaller) -> StreamingResponse:
        media_type, chunks = await caller.run(
            lambda principal: services.knowledge_evals.artifact(principal, knowledge_eval_id, kind))
        return StreamingResponse(chunks, media_type=media_type)

    download.__name__ = f"download_{kind}"
    return download


for _kind, _summary in RESULTS.items():
    router.add_api_route(f"/{{knowledge_eval_id}}/{_kind}", _download_route(_kind), methods=["GET"],
                         response_class=StreamingResponse, description=_summary, name=f"download_{_kind}")
