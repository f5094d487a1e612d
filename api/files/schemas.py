"""Wire shapes of the Files API (OpenAI's Files API)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from db.tables import File

#: Purposes accepted on upload (the SDK's documented values); results files are created by ftaas itself.
UPLOAD_PURPOSES = ("fine-tune", "batch", "assistants", "vision", "user_data", "evals")


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None
    expires_at: int | None = None

    @classmethod
    def of(cls, row: File) -> FileObject:
        return cls(id=row.id, bytes=row.bytes, created_at=row.created_at, filename=row.filename,
                   purpose=row.purpose, status=row.status, status_details=row.status_details,
                   expires_at=row.expires_at)


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool
