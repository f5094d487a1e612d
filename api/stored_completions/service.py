"""Stored chat completions: which completions are kept (`should_store`), keeping them (`record`), reading and
changing them in the caller's project, and turning a filtered set into a chat training file (`export`).

A completion is kept only once it has finished: a request that failed validation, failed in the engine or
was abandoned by its client leaves nothing behind. Another project's completion is a 404, like one that
does not exist.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from api.files.service import FileService
from contracts.errors import InvalidRequest, NotFound
from contracts.files.chat_lines import training_line
from contracts.inference.schemas import ChatCompletionRequest
from contracts.settings import StoredCompletionSettings
from db import stored_completions
from db.pagination import Cursor, Page
from db.projects import Principal
from db.session import Database
from db.stored_completions import CompletionFilter
from db.tables import File, StoredCompletion


@dataclass(frozen=True)
class StoredMessage:
    """One input message of a stored completion, with the id OpenAI gives it (`<completion id>-<index>`)."""

    id: str
    message: dict[str, Any]


@dataclass(frozen=True)
class ExportResult:
    file: File
    completions: int
    lines: int
    #: choices left out, by reason (`length`: cut off by max_tokens; `content_filter`)
    skipped: dict[str, int]


class StoredCompletionService:
    def __init__(self, db: Database, files: FileService, settings: StoredCompletionSettings) -> None:
        self.db = db
        self.files = files
        self.settings = settings

    def should_store(self, request: ChatCompletionRequest) -> bool:
        """Whether this request's completion is kept, by its `store` and the deployment's mode; a 400 when it
        asks to be kept where the deployment keeps nothing (its wish is not dropped in silence)."""
        if self.settings.mode == "never":
            if request.store:
                raise InvalidRequest("Stored completions are turned off on this deployment "
                                     "(FTAAS_STORED_COMPLETIONS_MODE=never); send store: false or omit it.",
                                     code="stored_completions_disabled", param="store")
            return False
        if self.settings.mode == "always":
            return request.store is not False
        return bool(request.store)

    def record(self, principal: Principal, request: ChatCompletionRequest, response: dict[str, Any]) -> None:
        """Keep a finished completion: the request as sent (its metadata apart) and the response returned."""
        sent = request.model_dump(mode="json", exclude_unset=True, by_alias=True, exclude={"metadata", "store"})
        with self.db.write() as session:
            stored_completions.store(session, principal.project_id, completion_id=response["id"],
                                     model=request.model, created_at=int(response["created"]),
                                     metadata=request.metadata, request=sent, response=response)

    def list(self, principal: Principal, where: CompletionFilter, cursor: Cursor) -> Page[StoredCompletion]:
        with self.db.read() as session:
            return stored_completions.list_page(session, principal.project_id, where, cursor)

    def get(self, principal: Principal, completion_id: str) -> StoredCompletion:
        with self.db.read() as session:
            return self._get(session, principal, completion_id)

    def update(self, principal: Principal, completion_id: str, metadata: dict[str, str] | None) -> StoredCompletion:
        with self.db.write() as session:
            row = self._get(session, principal, completion_id)
            stored_completions.set_metadata(session, row, metadata)
            session.flush()
            session.expunge(row)
            return row

    def delete(self, principal: Principal, completion_id: str) -> None:
        with self.db.write() as session:
            stored_completions.remove(session, self._get(session, principal, completion_id))

    def messages(self, principal: Principal, completion_id: str, *, after: str | None, limit: int,
                 newest_first: bool) -> Page[StoredMessage]:
        """The completion's input messages, in order (or reversed), after the message id `after`."""
        row = self.get(principal, completion_id)
        listed = [StoredMessage(f"{row.id}-{i}", message) for i, message in enumerate(row.request["messages"])]
        if newest_first:
            listed.reverse()
        if after is not None:
            position = next((i for i, m in enumerate(listed) if m.id == after), None)
            if position is None:
                raise InvalidRequest(f"after must be the id of a message of {completion_id}", param="after")
            listed = listed[position + 1:]
        return Page(items=listed[:limit], has_more=len(listed) > limit)

    def export(self, principal: Principal, where: CompletionFilter, *, filename: str,
               include_truncated: bool) -> ExportResult:
        """A chat JSONL file (purpose fine-tune) of the completions matching `where`, one line per choice:
        the request's messages and the answer, its tools and tool calls kept. The file is registered like an
        upload and validated the same way (its status and line-numbered errors tell the outcome)."""
        out = io.BytesIO()
        completions = lines = 0
        skipped: dict[str, int] = {}
        with self.db.read() as session:
            for row in stored_completions.matching(session, principal.project_id, where):
                completions += 1
                for choice in row.response.get("choices", []):
                    reason = choice.get("finish_reason")
                    if reason == "content_filter" or (reason == "length" and not include_truncated):
                        skipped[reason] = skipped.get(reason, 0) + 1
                        continue
                    out.write(json.dumps(training_line(row.request, choice["message"]), ensure_ascii=False)
                              .encode() + b"\n")
                    lines += 1
        if not completions:
            raise InvalidRequest("No stored completions match the filter; nothing to export.",
                                 code="no_stored_completions")
        if not lines:
            raise InvalidRequest(f"The {completions} matching stored completions were all cut off "
                                 f"({', '.join(f'{n} {r}' for r, n in skipped.items())}); send include_truncated: "
                                 "true to export them anyway.", code="no_stored_completions")
        file = self.files.create_from_bytes(principal, out.getvalue(), filename=filename, purpose="fine-tune")
        return ExportResult(file=file, completions=completions, lines=lines, skipped=skipped)

    @staticmethod
    def _get(session: Session, principal: Principal, completion_id: str) -> StoredCompletion:
        row = stored_completions.get(session, principal.project_id, completion_id)
        if row is None:
            raise NotFound(f"No stored chat completion with id '{completion_id}'.", code="chat_completion_not_found",
                           param="completion_id")
        return row

