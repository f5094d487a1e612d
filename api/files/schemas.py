"""Wire shapes of the Files API (OpenAI's Files API)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from db.tables import File

#: Purposes accepted on upload (the SDK's documented values); results files are created by ftaas itself.
UPLOAD_PURPOSES = ("fine-tune", "batch", "assistants", "vision", "user_data", "evals")


class TokenCounts(BaseModel):
    """A processed training file under one base model's tokenizer and chat template (ftaas extension)."""

    examples: int | None = None
    #: every token of every sequence a job would encode (a preference line's two)
    tokens: int | None = None
    #: the tokens the loss is taken on per epoch (None for reinforcement data: its samples are trained)
    trained_tokens: int | None = None
    #: the most tokens of one sequence (compare with a job's max_seq_len)
    longest_example: int | None = None
    #: why there are no counts for this model (its tokenizer or template could not encode the file)
    error: str | None = None


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
    #: Processed training files: base model -> token counts (an ftaas extension).
    token_counts: dict[str, TokenCounts] | None = None

    @classmethod
    def of(cls, row: File) -> FileObject:
        return cls(id=row.id, bytes=row.bytes, created_at=row.created_at, filename=row.filename,
                   purpose=row.purpose, status=row.status, status_details=row.status_details,
                   expires_at=row.expires_at,
                   token_counts=({model: TokenCounts(**counts) for model, counts in row.token_counts.items()}
                                 if row.token_counts else None))


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
