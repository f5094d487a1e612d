"""Pure-ASGI middleware: request ids and access logs, request body limits, and text no backend can store.

Body limits are enforced here, before any route parses anything (docs/architecture.md, "Reliability rules": Starlette would spool
a whole multipart body to disk before the handler runs). A declared Content-Length over the limit is
answered with 413 at once, without reading the body; a chunked body is counted as it streams and the
request fails with 413 the moment it passes the limit.
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import envelope

log = logging.getLogger("ftaas.access")

#: Multipart framing around an uploaded file (boundaries, part headers, the purpose field).
MULTIPART_OVERHEAD = 64 * 1024


class RequestContextMiddleware:
    """Adds `x-request-id` to every response, and the `x-ratelimit-*` headers the request's rate limiting
    left in its scope state (api.rate_limits); logs one access line per request (never headers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Identifies a request in logs and support tickets; it grants nothing, so the OS CSPRNG (a syscall
        # per request, measurable under load) is not needed.
        request_id = f"req_{random.getrandbits(128):032x}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers.append("x-request-id", request_id)
                for name, value in state.get("rate_limit_headers", {}).items():
                    if name not in headers:  # a 429 carries its own
                        headers.append(name, value)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s (%s)", scope["method"], scope["path"], request_id)
            if response_started:
                raise
            body = json.dumps(envelope("The server had an error while processing your request.",
                                       type="server_error", code="internal_error", param=None)).encode()
            await send({"type": "http.response.start", "status": 500, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()), (b"x-should-retry", b"false")]})
            await send({"type": "http.response.body", "body": body})
        finally:
            log.info("%s %s %s %.1fms %s", scope["method"], scope["path"], status,
                     (time.perf_counter() - started) * 1000, request_id)


class BodyLimitMiddleware:
    """413 for bodies over the limit: `upload_limit` (+ framing) on upload paths, `json_limit` elsewhere."""

    def __init__(self, app: ASGIApp, *, json_limit: int, upload_limit: int, upload_paths: frozenset[str]) -> None:
        self.app = app
        self.json_limit = json_limit
        self.upload_limit = upload_limit + MULTIPART_OVERHEAD
        self.upload_paths = upload_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if scope["path"] in self.upload_paths else self.json_limit
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _reject(send, declared, limit)
            return
        seen = 0
        rejected = False

        async def counting_receive() -> Message:
            # A body that crosses the limit while streaming (chunked, or longer than it declared) is answered
            # with 413 at once, and the route is told the client went away: it stops reading, and whatever it
            # answers is dropped. Raising here instead would let the route's body parser turn the error into
            # a 400, or read the rest of the body first.
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    rejected = True
                    await _reject(send, seen, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not rejected:
                raise  # after a 413 the route's complaints about the vanished body are expected


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large_message(limit: int) -> str:
    return f"The request body is larger than the limit of {limit} bytes."


async def _reject(send: Send, declared: int, limit: int) -> None:
    body = json.dumps(envelope(_too_large_message(limit), type="invalid_request_error",
                               code="request_too_large", param=None)).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        # The client is still sending; closing tells it not to reuse this connection.
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})



# ------------------------------------------------------------------------------------- unstorable text
def unstorable(text: str) -> str | None:
    """Why `text` cannot be stored or echoed (PostgreSQL text refuses NUL; a lone UTF-16 surrogate, which a
    JSON `\\udXXX` escape can produce, cannot be encoded as UTF-8), or None when it can."""
    if "\x00" in text:
        return "holds a NUL character (\\u0000)"
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        return "holds an unpaired UTF-16 surrogate"
    return None


def first_unstorable(value: Any, path: str = "") -> tuple[str, str] | None:
    """(dotted path, reason) of the first key or string in a JSON value that cannot be stored."""
    if isinstance(value, str):
        reason = unstorable(value)
        return (path, reason) if reason else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            reason = unstorable(key)
            if reason:
                return (path or "body", f"has a key that {reason}")
            found = first_unstorable(item, where)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = first_unstorable(item, f"{path}.{index}" if path else str(index))
            if found:
                return found
    return None


class StorableTextMiddleware:
    """400 for a path, query parameter or JSON body holding text no backend can store, before any route or
    database sees it (on PostgreSQL a NUL in an id would otherwise be a 500 from the driver).

    JSON bodies are read whole (their size is already bounded by BodyLimitMiddleware, which runs first) and
    replayed to the route; only bodies with a `\\u` escape can hold such text (a raw NUL or surrogate byte
    is invalid JSON, which the route reports), so others pass without being parsed twice.
    """

    def __init__(self, app: ASGIApp, *, skip_paths: frozenset[str]) -> None:
        self.app = app
        self.skip_paths = skip_paths  # multipart uploads: the file's bytes go to storage, not to a database

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        reason = unstorable(scope["path"])
        if reason:
            await _bad_request(send, f"The request path {reason}.", param=None)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        for name, value in parse_qsl(query, keep_blank_values=True, errors="surrogateescape"):
            reason = unstorable(name) or unstorable(value)
            if reason:
                await _bad_request(send, f"The query parameter {name!r} {reason}.", param=name)
                return
        if scope["method"] not in ("POST", "PUT", "PATCH") or scope["path"] in self.skip_paths:
            await self.app(scope, receive, send)
            return
        messages, body = [], b""
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if b"\\u" in body:
            try:
                document = json.loads(body)
            except ValueError:
                document = None  # not JSON: the route reports it
            found = first_unstorable(document) if document is not None else None
            if found:
                where, why = found
                await _bad_request(send, f"Invalid value for '{where}': it {why}.", param=where or None)
                return
        replay = iter(messages)

        async def replay_receive() -> Message:
            try:
                return next(replay)
            except StopIteration:
                return await receive()

        await self.app(scope, replay_receive, send)


async def _bad_request(send: Send, message: str, *, param: str | None) -> None:
    body = json.dumps(envelope(message, type="invalid_request_error", code="invalid_characters",
                               param=param)).encode()
    await send({"type": "http.response.start", "status": 400, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"x-should-retry", b"false")]})
    await send({"type": "http.response.body", "body": body})
