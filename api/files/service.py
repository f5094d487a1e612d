"""Files: streamed uploads into the store, project-scoped lookups, verified downloads, deletion."""

from __future__ import annotations

import itertools
import re
import time
import unicodedata
from collections.abc import AsyncIterator, Iterator

from starlette.concurrency import run_in_threadpool

from api.files.multipart import boundary_of, read_upload
from api.files.schemas import UPLOAD_PURPOSES
from contracts.errors import Conflict, InvalidRequest, NotFound
from db import files, ids, jobs
from db.files import VALIDATED_PURPOSES
from db.pagination import Cursor, Page
from db.projects import Principal
from db.session import Database
from db.states import FileStatus
from db.tables import File
from storage import ArtifactStore, ObjectWriter, layout

MAX_FILENAME = 255
EXPIRY_RANGE = (3600, 2_592_000)


def clean_filename(raw: str) -> str:
    """The user's filename is metadata only (storage keys are server-generated); keep it printable."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if not name or name in (".", ".."):
        raise InvalidRequest("The uploaded file needs a filename.", param="file")
    if len(name) > MAX_FILENAME:
        raise InvalidRequest(f"The filename is longer than {MAX_FILENAME} characters.", param="file")
    return name


class FileService:
    def __init__(self, db: Database, store: ArtifactStore, *, max_upload_bytes: int) -> None:
        self.db = db
        self.store = store
        self.max_upload_bytes = max_upload_bytes

    async def upload(self, principal: Principal, content_type: str | None, body: AsyncIterator[bytes]) -> File:
        """Store the file part under a fresh id while hashing it, then register it in one transaction.
        Fine-tune files start `uploaded` and are validated by a task; others are `processed` at once."""
        boundary = boundary_of(content_type)
        file_id = ids.new_id(ids.FILE)
        key = layout.file_key(file_id)

        async def open_writer(fields: dict[str, str], filename: str) -> ObjectWriter:
            if "purpose" in fields:
                _check_purpose(fields["purpose"], clean_filename(filename))
            return await run_in_threadpool(self.store.open_writer, key)

        parsed = await read_upload(body, boundary, file_field="file", max_file_bytes=self.max_upload_bytes,
                                   open_writer=open_writer)
        try:
            if parsed.file is None:
                raise InvalidRequest("Missing required parameter: 'file'.", param="file")
            purpose = parsed.fields.get("purpose")
            if purpose is None:
                raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose")
            filename = clean_filename(parsed.file.filename)
            _check_purpose(purpose, filename)
            if parsed.file.stored.size == 0:
                raise InvalidRequest("The file is empty.", code="empty_file", param="file")
            now = int(time.time())
            expires_at = _expiry(parsed.fields, now)
            row = File(
                id=file_id, project_id=principal.project_id, filename=filename, purpose=purpose,
                bytes=parsed.file.stored.size, sha256=parsed.file.stored.sha256, storage_key=key,
                status=FileStatus.UPLOADED if purpose in VALIDATED_PURPOSES else FileStatus.PROCESSED,
                created_at=now, expires_at=expires_at, error_count=0,
            )
            with self.db.write() as session:
                files.insert(session, row)
            return row
        except BaseException:
            if parsed.file is not None:
                await run_in_threadpool(self.store.delete, key)
            raise

    def create_from_bytes(self, principal: Principal, data: bytes, *, filename: str, purpose: str) -> File:
        """A file the server wrote for the caller (an export), registered exactly as an upload of `data` with
        this filename and purpose would be: fine-tune files are validated by the same task."""
        filename = clean_filename(filename)
        _check_purpose(purpose, filename)
        if not data:
            raise InvalidRequest("The file is empty.", code="empty_file", param="file")
        file_id = ids.new_id(ids.FILE)
        key = layout.file_key(file_id)
        with self.store.open_writer(key) as writer:
            writer.write(data)
            stored = writer.commit()
        try:
            now = int(time.time())
            row = File(id=file_id, project_id=principal.project_id, filename=filename, purpose=purpose,
                       bytes=stored.size, sha256=stored.sha256, storage_key=key,
                       status=FileStatus.UPLOADED if purpose in VALIDATED_PURPOSES else FileStatus.PROCESSED,
                       created_at=now, expires_at=None, error_count=0)
            with self.db.write() as session:
                files.insert(session, row)
            return row
        except BaseException:
            self.store.delete(key)
            raise

    def get(self, principal: Principal, file_id: str) -> File:
        with self.db.read() as session:
            row = files.get(session, principal.project_id, file_id)
        if row is None:
            raise NotFound(f"No such File object: {file_id}", code="file_not_found", param="file_id")
        return row

    def list(self, principal: Principal, cursor: Cursor, *, purpose: str | None) -> Page[File]:
        with self.db.read() as session:
            return files.list_page(session, principal.project_id, cursor, purpose=purpose)

    def delete(self, principal: Principal, file_id: str) -> None:
        with self.db.write() as session:
            row = files.get(session, principal.project_id, file_id)
            if row is None:
                raise NotFound(f"No such File object: {file_id}", code="file_not_found", param="file_id")
            user = jobs.file_in_use(session, file_id)
            if user is not None:
                raise Conflict(f"File {file_id} is used by fine-tuning job {user}, which has not finished; "
                               "cancel it or wait for it to finish first.", code="file_in_use", param="file_id")
            key = row.storage_key
            files.delete(session, row)
        # After commit: a crash here leaves an orphaned object, never a row without its object.
        self.store.delete(key)

    def content(self, principal: Principal, file_id: str) -> tuple[File, Iterator[bytes]]:
        """The file and its verified bytes. The object is opened and its first chunk read here, before any
        header is sent, so that a store that is down is a 503 rather than a 200 cut off mid-body."""
        row = self.get(principal, file_id)
        chunks = self.store.iter_verified(row.storage_key, sha256=row.sha256, size=row.bytes)
        first = next(chunks, None)
        return row, itertools.chain([] if first is None else [first], chunks)


def _check_purpose(purpose: str, filename: str) -> None:
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(f"Invalid value for 'purpose': {purpose!r}; expected one of {', '.join(UPLOAD_PURPOSES)}.",
                             param="purpose")
    if purpose == "fine-tune" and not filename.lower().endswith(".jsonl"):
        raise InvalidRequest("Fine-tuning files must be JSONL files with the .jsonl extension.",
                             code="invalid_file_format", param="file")


_EXPIRY_FIELD = re.compile(r"^expires_after\[(anchor|seconds)\]$")


def _expiry(fields: dict[str, str], now: int) -> int | None:
    given = {match.group(1): value for name, value in fields.items() if (match := _EXPIRY_FIELD.match(name))}
    if not given:
        return None
    if given.get("anchor") != "created_at":
        raise InvalidRequest("expires_after[anchor] must be 'created_at'.", param="expires_after.anchor")
    try:
        seconds = int(given.get("seconds", ""))
    except ValueError:
        raise InvalidRequest("expires_after[seconds] must be an integer.", param="expires_after.seconds") from None
    if not EXPIRY_RANGE[0] <= seconds <= EXPIRY_RANGE[1]:
        raise InvalidRequest(f"expires_after[seconds] must be between {EXPIRY_RANGE[0]} and {EXPIRY_RANGE[1]}.",
                             param="expires_after.seconds")
    return now + seconds
