"""The single mapping from the error taxonomy (contracts.errors) to HTTP and the OpenAI error envelope:

    {"error": {"message": str, "type": str, "param": str | null, "code": str | null}}

Retry hints for the official SDK (docs/architecture.md, "Wire contract"): conflicts and quota errors carry
`x-should-retry: false` (retrying cannot help, and the SDK would otherwise retry 409/429 on its own);
infrastructure errors carry `Retry-After` so the SDK backs off and tries again.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.rate_limits import reset_header
from contracts import errors as e

log = logging.getLogger(__name__)

# (class, HTTP status, OpenAI error type). Order matters: the first matching class wins.
_STATUS: list[tuple[type[e.FTaaSError], int, str]] = [
    (e.AuthenticationFailed, 401, "invalid_request_error"),
    (e.PermissionDenied, 403, "invalid_request_error"),
    (e.NotFound, 404, "invalid_request_error"),
    (e.Conflict, 409, "invalid_request_error"),
    (e.PayloadTooLarge, 413, "invalid_request_error"),
    (e.QuotaExceeded, 429, "insufficient_quota"),
    (e.RateLimited, 429, "requests"),
    (e.UserError, 400, "invalid_request_error"),
    (e.Overloaded, 429, "rate_limit_exceeded"),
    (e.DeadlineExceeded, 504, "server_error"),
    (e.InfrastructureError, 503, "server_error"),
    (e.FTaaSError, 500, "server_error"),
]


def envelope(message: str, *, type: str, code: str | None, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(exc: e.FTaaSError) -> JSONResponse:
    status, kind = next((s, k) for cls, s, k in _STATUS if isinstance(exc, cls))
    if isinstance(exc, e.RateLimited):
        kind = exc.unit  # OpenAI's error type names what ran out: "requests" or "tokens"
    if status >= 500:
        log.warning("%s (%s): %s", exc.code, status, exc.message)
    headers: dict[str, str] = {}
    if isinstance(exc, e.RateLimited):
        headers["retry-after"] = str(max(1, math.ceil(exc.reset_seconds)))
        headers["retry-after-ms"] = str(max(1, math.ceil(exc.reset_seconds * 1000)))
        headers[f"x-ratelimit-limit-{exc.unit}"] = str(exc.limit)
        headers[f"x-ratelimit-remaining-{exc.unit}"] = "0"
        headers[f"x-ratelimit-reset-{exc.unit}"] = reset_header(exc.reset_seconds)
        if not exc.retryable:
            headers["x-should-retry"] = "false"
    elif isinstance(exc, e.QuotaExceeded):
        headers["retry-after"] = str(exc.retry_after)
        headers["x-should-retry"] = "false"
    elif isinstance(exc, e.Conflict):
        headers["x-should-retry"] = "false"
    elif isinstance(exc, e.Overloaded):
        headers["retry-after"] = str(exc.retry_after)
    elif isinstance(exc, e.InfrastructureError):
        headers["retry-after"] = "1"
    elif status == 500:
        headers["x-should-retry"] = "false"
    if isinstance(exc, e.PayloadTooLarge):
        # The client may still be sending: close rather than read (and discard) the rest to reuse the
        # connection, which for a large upload means reading it all.
        headers["connection"] = "close"
    return JSONResponse(envelope(exc.public_message, type=kind, code=exc.code, param=exc.param), status_code=status,
                        headers=headers)


def _validation_message(error: dict[str, Any]) -> tuple[str, str | None]:
    location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "header")]
    # Drop pydantic's union-branch labels (e.g. "literal['auto']", "int") from the reported parameter.
    location = [part for part in location if not (part.startswith(("literal[", "function-")) or part in
                                                  ("int", "float", "str", "bool", "list", "dict"))]
    param = ".".join(location) or None
    if error.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    if error.get("type") == "missing":
        if param is None:
            return "The request needs a JSON body.", None
        return f"Missing required parameter: '{param}'.", param
    detail = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: '{param}'.", param
    return (f"Invalid value for '{param}': {detail}." if param else f"Invalid request: {detail}."), param


def install(app: FastAPI) -> None:
    @app.exception_handler(e.FTaaSError)
    async def _ftaas(_: Request, exc: e.FTaaSError) -> JSONResponse:
        if isinstance(exc, e.InfrastructureError | e.IntegrityFailure) or type(exc) is e.FTaaSError:
            log.error("request failed: %s: %s", type(exc).__name__, exc)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        message, param = _validation_message(first)
        return JSONResponse(envelope(message, type="invalid_request_error", code="invalid_request", param=param),
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message, code = f"Unknown request URL: {request.method} {request.url.path}.", "unknown_url"
        elif exc.status_code == 405:
            message, code = f"Method {request.method} is not allowed on {request.url.path}.", "method_not_allowed"
        else:
            message, code = str(exc.detail), None
        return JSONResponse(envelope(message, type="invalid_request_error", code=code, param=None),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))
