"""Wire shapes of the stored chat completions routes (OpenAI's, plus ftaas's export)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.files.schemas import FileObject
from api.stored_completions.service import ExportResult, StoredMessage
from contracts.metadata import check_metadata
from db.tables import StoredCompletion


class StoredChatCompletionObject(BaseModel):
    """The `chat.completion` object as it was returned, with its current metadata."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, int] | None = None
    metadata: dict[str, str]

    @classmethod
    def of(cls, row: StoredCompletion) -> StoredChatCompletionObject:
        return cls(**{**row.response, "metadata": row.user_metadata or {}})


class StoredChatCompletionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[StoredChatCompletionObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class StoredChatCompletionDeleted(BaseModel):
    id: str
    object: Literal["chat.completion.deleted"] = "chat.completion.deleted"
    deleted: bool


class StoredMessageObject(BaseModel):
    """An input message of a stored completion (OpenAI's `ChatCompletionStoreMessage`)."""

    id: str
    role: str
    content: str | None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    #: the content parts as sent, where the message was sent as parts (content is then their text)
    content_parts: list[dict[str, Any]] | None = None

    @classmethod
    def of(cls, stored: StoredMessage) -> StoredMessageObject:
        message = stored.message
        content = message.get("content")
        parts = content if isinstance(content, list) else None
        text = "".join(str(p.get("text", "")) for p in parts) if parts is not None else content
        return cls(id=stored.id, role=message["role"], content=text, name=message.get("name"),
                   tool_calls=message.get("tool_calls"), tool_call_id=message.get("tool_call_id"), content_parts=parts)


class StoredMessageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[StoredMessageObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class UpdateStoredCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metadata: dict[str, str] | None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_metadata(value)


class ExportStoredCompletionsRequest(BaseModel):
    """ftaas extension: which stored completions become a training file (every condition given must hold)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, min_length=1, max_length=320)
    metadata: dict[str, str] | None = None
    created_after: int | None = Field(default=None, ge=0, description="Unix seconds, inclusive.")
    created_before: int | None = Field(default=None, ge=0, description="Unix seconds, inclusive.")
    filename: str = Field(default="stored_completions.jsonl", min_length=1, max_length=255)
    include_truncated: bool = Field(
        default=False, description="Also export answers cut off by max_tokens (finish_reason 'length').")

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_metadata(value)


class ExportObject(BaseModel):
    object: Literal["chat.completion.export"] = "chat.completion.export"
    file: FileObject
    #: stored completions that matched the filter
    completions: int
    #: training lines written (one per exported choice)
    lines: int
    #: choices left out, by finish_reason
    skipped: dict[str, int]

    @classmethod
    def of(cls, result: ExportResult) -> ExportObject:
        return cls(file=FileObject.of(result.file), completions=result.completions, lines=result.lines,
                   skipped=result.skipped)
