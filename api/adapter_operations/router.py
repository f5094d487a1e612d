"""Routes: /v1/adapter_operations (create, list, retrieve, cancel): merges, LiNeS, compression, export, import.
With the SDK: `client.post("/adapter_operations", body={...}, cast_to=object)`."""

from __future__ import annotations

from fastapi import APIRouter

from api.adapter_operations.schemas import AdapterOperationList, AdapterOperationObject, OperationRequest
from api.dependencies import AuthenticatedCaller, CurrentCaller, Services
from api.pagination import check_cursor, check_limit
from api.responses import list_response, model_response
from db import ids

router = APIRouter(prefix="/v1/adapter_operations", tags=["adapters"])


@router.post("", response_model=AdapterOperationObject)
async def create_operation(body: OperationRequest, services: Services, caller: AuthenticatedCaller):  # type: ignore[no-untyped-def]
    return await caller.run(lambda principal: model_response(
        AdapterOperationObject.of(services.adapter_operations.create(principal, body))))


@router.get("", response_model=AdapterOperationList)
async def list_operations(services: Services, caller: CurrentCaller, after: str | None = None, limit: int = 20):  # type: ignore[no-untyped-def]
    after, limit = check_cursor(after, ids.ADAPTER_OPERATION), check_limit(limit, maximum=100)

    def work(principal):  # type: ignore[no-untyped-def]
        page = services.adapter_operations.list(principal, after=after, limit=limit)
        return list_response([AdapterOperationObject.of(row) for row in page.items], has_more=page.has_more)

    return await caller.run(work)


@router.get("/{operation_id}", response_model=AdapterOperationObject)
async def retrieve_operation(operation_id: str, services: Services, caller: CurrentCaller):  # type: ignore[no-untyped-def]
    return await caller.run(lambda principal: model_response(
        AdapterOperationObject.of(services.adapter_operations.get(principal, operation_id))))


@router.post("/{operation_id}/cancel", response_model=AdapterOperationObject)
async def cancel_operation(operation_id: str, services: Services, caller: CurrentCaller):  # type: ignore[no-untyped-def]
    return await caller.run(lambda principal: model_response(
        AdapterOperationObject.of(services.adapter_operations.cancel(principal, operation_id))))
