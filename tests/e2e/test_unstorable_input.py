"""Text no backend can store (NUL, unpaired UTF-16 surrogates) anywhere in a request is a 400 in the
OpenAI error shape, on SQLite (embedded) and on PostgreSQL (cluster), whose driver would otherwise answer
with a 500. Each case below once reached a 5xx."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.servers import LiveServer

pytestmark = pytest.mark.slow

def send(server: LiveServer, method: str, path: str, body: Any) -> Any:
    """The body as JSON with every non-ASCII character escaped (`\\uXXXX`), the way most clients send it."""
    with server.http() as api:
        if body is None:
            return api.request(method, path)
        return api.request(method, path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


# (method, path with query, JSON body)
CORPUS: list[tuple[str, str, Any]] = [
    ("GET", "/files/file-%00", None),
    ("GET", "/files/file-%00/content", None),
    ("DELETE", "/files/file-%00", None),
    ("GET", "/models/ab%00cd", None),
    ("GET", "/fine_tuning/jobs/ftjob-%00x", None),
    ("GET", "/fine_tuning/jobs/ftjob-%00x/events", None),
    ("GET", "/fine_tuning/jobs?metadata[k]=%00", None),
    ("GET", "/fine_tuning/jobs?after=ftjob-%00", None),
    ("GET", "/files?after=%ED%A0%80", None),  # a lone surrogate, percent-encoded
    ("POST", "/fine_tuning/jobs", {"model": "ftaas-tiny", "training_file": "file-\u0000"}),
    ("POST", "/fine_tuning/jobs", {"model": "ftaas-tiny", "training_file": "file-x", "suffix": "a\ud800"}),
    ("POST", "/fine_tuning/jobs", {"model": "ftaas-tiny", "training_file": "file-x", "metadata": {"k\u0000": "v"}}),
    ("POST", "/adapter_operations", {"type": "compress", "model": "a\u0000b", "name": "x"}),
    ("GET", "/knowledge_evals/kev-%00", None),
    ("POST", "/knowledge_evals", {"model": "a\u0000b", "suites": ["fictional_people"]}),
    ("POST", "/knowledge_evals/training_files", {"suite": "x\u0000"}),
]


@pytest.mark.parametrize(("method", "path", "body"), CORPUS, ids=[f"{m} {p} {b}" for m, p, b in CORPUS])
def test_text_no_backend_can_store_is_a_400(live: LiveServer, method: str, path: str, body: Any) -> None:
    reply = send(live, method, path, body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_characters", error


def test_a_malformed_suite_uri_is_a_400_not_a_500(live: LiveServer) -> None:
    with live.http() as api:
        reply = api.post("/knowledge_evals/training_files", json={"suite": "[x"})
    assert reply.status_code == 400, reply.text


@pytest.mark.parametrize("model", ["a\u0000b", "a\udc80b"])
def test_inference_requests_naming_unstorable_models_are_a_400(embedded: LiveServer, model: str) -> None:
    for path, body in (("/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                       ("/completions", {"prompt": "hi"})):
        reply = send(embedded, "POST", path, {"model": model, "max_tokens": 2, **body})
        assert reply.status_code == 400, reply.text


def test_ordinary_escapes_still_pass(embedded: LiveServer) -> None:
    """The check reads only escapes that make unstorable text: an escaped accent or emoji is text like any."""
    reply = send(embedded, "POST", "/chat/completions", {
        "model": "ftaas-tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "caf\u00e9 \U0001f600"}]})
    assert reply.status_code == 200, reply.text
