"""Routes: stored chat completions, as OpenAI's API has them (`client.chat.completions.list / retrieve / update
/ delete / messages.list`), and ftaas's export of a filtered set as a training file
(`POST /v1/chat/completions/export`; `ftaas completions export`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from api.dependencies import AuthenticatedCaller, CurrentCaller, Services
from api.pagination import Order, check_cursor, check_limit, list_page, metadata_filter
from api.responses import model_response
from api.stored_completions.schemas import (
    ExportObject,
    ExportStoredCompletionsRequest,
    StoredChatCompletionDeleted,
    StoredChatCompletionList,
    StoredChatCompletionObject,
    StoredMessageList,
    StoredMessageObject,
    UpdateStoredCompletionRequest,
)
from contracts.errors import InvalidRequest
from contracts.metadata import check_metadata
from db import ids
from db.pagination import Cursor
from db.stored_completions import CompletionFilter

router = APIRouter(prefix="/v1/chat/completions", tags=["stored completions"])

_LIST_PARAMS = {"after", "limit", "order", "model"}


def list_query(request: Request) -> tuple[CompletionFilter, Cursor]:
    """`model`, `metadata[<key>]=<value>` (each pair must match), `after`, `limit` (1-100, 20) and `order`
    (asc, the default, or desc). An unknown parameter is a 400, not ignored."""
    query = request.query_params
    metadata = metadata_filter(query.multi_items(), others=_LIST_PARAMS)
    try:
        check_metadata(metadata)
    except ValueError as exc:
        raise InvalidRequest(f"metadata filter: {exc}", param="metadata") from None
    order = query.get("order", "asc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'", param="order")
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise InvalidRequest("limit must be an integer", param="limit") from None
    cursor = Cursor(check_cursor(query.get("after"), ids.CHAT_COMPLETION), check_limit(limit, maximum=100),
                    newest_first=order == "desc")
    return CompletionFilter(model=query.get("model"), metadata=metadata or None), cursor


ListQuery = Annotated[tuple[CompletionFilter, Cursor], Depends(list_query)]


@router.get("", response_model=StoredChatCompletionList)
async def list_stored_completions(services: Services, caller: CurrentCaller, query: ListQuery) -> Response:
    where, cursor = query
    return await list_page(caller, lambda principal: services.stored_completions.list(principal, where, cursor),
                           StoredChatCompletionObject.of)


@router.post("/export", response_model=ExportObject)
async def export_stored_completions(body: ExportStoredCompletionsRequest, services: Services,
                                    caller: AuthenticatedCaller) -> Response:
    where = CompletionFilter(model=body.model, metadata=body.metadata, created_after=body.created_after,
                             created_before=body.created_before)
    return await caller.run(lambda principal: model_response(ExportObject.of(services.stored_completions.export(
        principal, where, filename=body.filename, include_truncated=body.include_truncated))))


@router.get("/{completion_id}", response_model=StoredChatCompletionObject)
async def retrieve_stored_completion(completion_id: str, services: Services, caller: CurrentCaller) -> Response:
    return await caller.run(lambda principal: model_response(
        StoredChatCompletionObject.of(services.stored_completions.get(principal, completion_id))))


@router.post("/{completion_id}", response_model=StoredChatCompletionObject)
async def update_stored_completion(completion_id: str, body: UpdateStoredCompletionRequest, services: Services,
                                   caller: AuthenticatedCaller) -> Response:
    return await caller.run(lambda principal: model_response(StoredChatCompletionObject.of(
        services.stored_completions.update(principal, completion_id, body.metadata))))


@router.delete("/{completion_id}", response_model=StoredChatCompletionDeleted)
async def delete_stored_completion(completion_id: str, services: Services, caller: AuthenticatedCaller) -> Response:
    await caller.run(lambda principal: services.stored_completions.delete(principal, completion_id))
    return model_response(StoredChatCompletionDeleted(id=completion_id, deleted=True))


@router.get("/{completion_id}/messages", response_model=StoredMessageList)
async def list_stored_messages(completion_id: str, services: Services, caller: CurrentCaller,
                               after: str | None = None, limit: int = 20, order: Order = "asc") -> Response:
    check_limit(limit, maximum=100)
    return await list_page(caller, lambda principal: services.stored_completions.messages(
        principal, completion_id, after=after, limit=limit, newest_first=order == "desc"), StoredMessageObject.of)
