"""Routes: /v1/files (OpenAI Files API)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from api.dependencies import AuthenticatedCaller, CurrentCaller, Services
from api.files.schemas import FileDeleted, FileList, FileObject
from api.pagination import cursor_query, list_page
from api.responses import model_response
from db import ids
from db.pagination import Cursor

router = APIRouter(prefix="/v1/files", tags=["files"])
#: OpenAI's files list: up to 10,000 per page (the default), newest first unless `order=asc`.
FileCursor = Annotated[Cursor, Depends(cursor_query(ids.FILE, default_limit=10000, maximum=10000, order="desc"))]


@router.post("", response_model=FileObject, summary="Upload a file (multipart: file, purpose)",
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["file", "purpose"],
                 "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"type": "string"}}}}}}})
async def upload_file(request: Request, services: Services, caller: AuthenticatedCaller) -> Response:
    row = await services.files.upload(caller.authenticate(), request.headers.get("content-type"), request.stream())
    return model_response(FileObject.of(row))


@router.get("", response_model=FileList)
async def list_files(services: Services, caller: CurrentCaller, cursor: FileCursor,
                     purpose: str | None = None) -> Response:
    return await list_page(caller, lambda principal: services.files.list(principal, cursor, purpose=purpose),
                           FileObject.of)


@router.get("/{file_id}", response_model=FileObject)
async def retrieve_file(file_id: str, services: Services, caller: CurrentCaller) -> Response:
    return await caller.run(lambda principal: model_response(FileObject.of(services.files.get(principal, file_id))))


@router.delete("/{file_id}", response_model=FileDeleted)
async def delete_file(file_id: str, services: Services, caller: CurrentCaller) -> Response:
    await caller.run(lambda principal: services.files.delete(principal, file_id))
    return model_response(FileDeleted(id=file_id, deleted=True))


@router.get("/{file_id}/content", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
async def file_content(file_id: str, services: Services, caller: CurrentCaller) -> StreamingResponse:
    row, chunks = await caller.run(lambda principal: services.files.content(principal, file_id))
    # Content-Length is the recorded size; if the stored bytes fail verification the stream is cut short,
    # so a client can never receive a complete body that differs from what was uploaded.
    return StreamingResponse(iterate_in_threadpool(chunks), media_type="application/octet-stream", headers={
        "content-length": str(row.bytes),
        "content-disposition": f"attachment; filename*=UTF-8''{quote(row.filename)}",
    })
