"""A streaming multipart/form-data reader that writes the file part straight into the artifact store.

Starlette's form parser spools the whole body to a temporary file before the route runs; this reader
instead feeds request chunks to python-multipart's incremental parser and hands file bytes to an
`ObjectWriter` as they arrive (hashing on the way), so an upload never exists twice and never buffers more
than one write-sized chunk. Text fields are small and capped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from contracts.errors import InvalidRequest, PayloadTooLarge
from storage import ObjectWriter, StoredObject

WRITE_CHUNK = 1024 * 1024
MAX_FIELD_BYTES = 64 * 1024


@dataclass
class UploadedFile:
    field_name: str
    filename: str
    stored: StoredObject


@dataclass
class ParsedUpload:
    fields: dict[str, str] = field(default_factory=dict)
    file: UploadedFile | None = None


def boundary_of(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise InvalidRequest("Expected a multipart/form-data body with a 'file' part.", code="invalid_content_type")
    return options[b"boundary"]


class _HeaderState:
    """Header bytes of the part being parsed (python-multipart reports them in pieces)."""

    def __init__(self) -> None:
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.headers: dict[bytes, bytes] = {}


async def read_upload(
    stream: AsyncIterator[bytes],
    boundary: bytes,
    *,
    file_field: str,
    max_file_bytes: int,
    open_writer: Callable[[dict[str, str], str], Awaitable[ObjectWriter]],
) -> ParsedUpload:
    """Parse the body. `open_writer(fields_so_far, filename)` is awaited when the file part starts; it may
    raise to reject the upload before a byte is stored. The file is committed when its part ends."""
    # Long on purpose: one streaming parse whose states (headers, file part, fields, limits) share locals.
    result = ParsedUpload()
    events: list[tuple[str, object]] = []
    part = _HeaderState()

    def on_part_begin() -> None:
        events.append(("begin", None))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part.header_value += data[start:end]

    def on_header_end() -> None:
        part.headers[bytes(part.header_field).lower()] = bytes(part.header_value)
        part.header_field.clear()
        part.header_value.clear()

    def on_headers_finished() -> None:
        events.append(("headers", dict(part.headers)))
        part.headers.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        events.append(("data", data[start:end]))

    def on_part_end() -> None:
        events.append(("end", None))

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end,
    })
    writer: ObjectWriter | None = None
    current_is_file = False
    field_name = ""
    field_value = bytearray()
    pending = bytearray()
    written = 0
    filename = ""
    try:
        async for chunk in stream:
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise InvalidRequest(f"Malformed multipart body: {exc}", code="invalid_multipart") from exc
            for kind, payload in events:
                if kind == "headers":
                    assert isinstance(payload, dict)
                    _, options = parse_options_header(payload.get(b"content-disposition", b""))
                    field_name = options.get(b"name", b"").decode("utf-8", "replace")
                    raw_filename = options.get(b"filename")
                    current_is_file = raw_filename is not None
                    if raw_filename is not None:
                        if field_name != file_field or writer is not None or result.file is not None:
                            raise InvalidRequest(f"Expected exactly one file, in the '{file_field}' field.",
                                                 code="invalid_multipart", param=field_name or None)
                        filename = raw_filename.decode("utf-8", "replace")
                        writer = await open_writer(dict(result.fields), filename)
                    field_value.clear()
                elif kind == "data":
                    assert isinstance(payload, bytes)
                    if current_is_file:
                        written += len(payload)
                        if written > max_file_bytes:
                            raise PayloadTooLarge(f"The file is larger than the limit of {max_file_bytes} bytes.",
                                                  code="file_too_large", param=file_field)
                        pending += payload
                        if len(pending) >= WRITE_CHUNK and writer is not None:
                            data, pending = bytes(pending), bytearray()
                            await run_in_threadpool(writer.write, data)
                    else:
                        field_value += payload
                        if len(field_value) > MAX_FIELD_BYTES:
                            raise InvalidRequest(f"Form field '{field_name}' is too long.", param=field_name)
                elif kind == "end":
                    if current_is_file and writer is not None:
                        data, pending = bytes(pending), bytearray()
                        if data:
                            await run_in_threadpool(writer.write, data)
                        stored = await run_in_threadpool(writer.commit)
                        result.file = UploadedFile(field_name, filename, stored)
                        writer = None
                    elif not current_is_file:
                        result.fields[field_name] = field_value.decode("utf-8", "replace")
                    current_is_file = False
            events.clear()
        try:
            parser.finalize()
        except MultipartParseError as exc:
            raise InvalidRequest(f"Malformed multipart body: {exc}", code="invalid_multipart") from exc
        if writer is not None:
            raise InvalidRequest("The multipart body ended in the middle of the file.", code="invalid_multipart")
        return result
    finally:
        if writer is not None:
            await run_in_threadpool(writer.abort)
