"""/console: the web console's page and assets, from the package (no CDN, no third-party request, no build
step: plain HTML, CSS and JavaScript written for the browser as they are). The page signs in with an API key
kept in the tab's session storage and calls the same /v1 API as the SDKs, so a key sees in the console exactly
what its project sees through the API.

Every response carries a Content-Security-Policy without inline script or style and with requests to this
origin only: whatever a user or a model wrote (file names, metadata, events, model output) that slipped into
the page as markup could not run. The script itself never writes markup from data (it builds nodes and sets
their text); tests/e2e/test_console.py checks both with script-injection payloads.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Response

from contracts.errors import NotFound

STATIC = Path(__file__).with_name("static")
#: The assets the page loads, and their media types.
ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.get("/console")
async def console_page() -> Response:
    return Response((STATIC / "index.html").read_bytes(), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/console/{asset}")
async def console_asset(asset: str) -> Response:
    if asset not in ASSETS:  # a fixed list: no path from the request reaches the file system
        raise NotFound(f"no console asset {asset!r}", param="asset")
    return Response((STATIC / asset).read_bytes(), media_type=ASSETS[asset], headers=HEADERS)
