"""Routes: /v1/adapter_operations (create, list, retrieve, cancel): merges, LiNeS, compression, export, import.
With the SDK: `client.post("/adapter_operations", body={...}, cast_to=object)`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from api.adapter_operations.schemas import AdapterOperationList, AdapterOperationObject, OperationRequest
from api.dependencies import AuthenticatedCaller, CurrentCaller, Services
from api.pagination import cursor_query, list_page
from api.responses import model_response
from db import ids
from db.pagination import Cursor

router = APIRouter(prefix="/v1/adapter_operations", tags=["adapters"])
OperationCursor = Annotated[Cursor, Depends(cursor_query(ids.ADAPTER_OPERATION))]


@router.post("", response_model=AdapterOperationObject)
async def create_operation(body: OperationRequest, services: Services, caller: AuthenticatedCaller) -> Response:
    return await caller.run(lambda principal: model_response(
        AdapterOperationObject.of(services.adapter_operations.create(principal, body))))


@router.get("", response_model=AdapterOperationList)
async def list_operations(services: Services, caller: CurrentCaller, cursor: OperationCursor) -> Response:
    return await list_page(caller, lambda principal: services.adapter_operations.list(principal, cursor),
                           AdapterOperationObject.of)


@router.get("/{operation_id}", response_model=AdapterOperationObject)
async def retrieve_operation(operation_id: str, services: Services, caller: CurrentCaller) -> Response:
    return await caller.run(lambda principal: model_response(
        AdapterOperationObject.of(services.adapter_operations.get(principal, operation_id))))


@router.post("/{operation_id}/cancel", response_model=AdapterOperationObject)
async def cancel_operation(operation_id: str, services: Services, caller: CurrentCaller) -> Response:
    return await caller.run(lambda principal: model_response(
        AdapterOperationObject.of(services.adapter_operations.cancel(principal, operation_id))))
