"""Routes: /v1/files (OpenAI Files API)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from api.dependencies import CurrentPrincipal, Services
from api.files.schemas import FileDeleted, FileList, FileObject
from api.pagination import check_cursor, check_limit, list_envelope
from db import ids

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post("", response_model=FileObject, summary="Upload a file (multipart: file, purpose)",
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["file", "purpose"],
                 "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"type": "string"}}}}}}})
async def upload_file(request: Request, services: Services, principal: CurrentPrincipal) -> FileObject:
    row = await services.files.upload(principal, request.headers.get("content-type"), request.stream())
    return FileObject.of(row)


@router.get("", response_model=FileList)
def list_files(services: Services, principal: CurrentPrincipal,
               after: str | None = None, limit: Annotated[int, Query()] = 10000,
               order: Literal["asc", "desc"] = "desc", purpose: str | None = None) -> dict:
    page = services.files.list(principal, after=check_cursor(after, ids.FILE), limit=check_limit(limit, maximum=10000),
                               newest_first=order == "desc", purpose=purpose)
    return list_envelope([FileObject.of(row).model_dump() for row in page.items], has_more=page.has_more)


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, services: Services, principal: CurrentPrincipal) -> FileObject:
    return FileObject.of(services.files.get(principal, file_id))


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, services: Services, principal: CurrentPrincipal) -> FileDeleted:
    services.files.delete(principal, file_id)
    return FileDeleted(id=file_id, deleted=True)


@router.get("/{file_id}/content", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
def file_content(file_id: str, services: Services, principal: CurrentPrincipal) -> StreamingResponse:
    row, chunks = services.files.content(principal, file_id)
    # Content-Length is the recorded size; if the stored bytes fail verification the stream is cut short,
    # so a client can never receive a complete body that differs from what was uploaded.
    return StreamingResponse(iterate_in_threadpool(chunks), media_type="application/octet-stream", headers={
        "content-length": str(row.bytes),
        "content-disposition": f"attachment; filename*=UTF-8''{quote(row.filename)}",
    })
