"""Stored chat completions (OpenAI's `store: true`), through the official SDK against a live server: what is
kept and when, the list and its filters, retrieve, messages, metadata updates, delete, tenant isolation,
retention, the deployment's modes, and the export of a filtered set as a chat training file."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from contracts.settings import DEMO_BASE_MODEL
from tests.serving.conftest import LiveServing

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Oslo", "Paris"]}},
                   "required": ["city"]}}}]


def _ask(client: openai.OpenAI, content: str, **options: Any) -> Any:
    options.setdefault("temperature", 0)
    options.setdefault("max_tokens", 8)
    return client.chat.completions.create(model=DEMO_BASE_MODEL, messages=[{"role": "user", "content": content}],
                                          **options)


def _streamed(client: openai.OpenAI, content: str, **options: Any) -> tuple[str, str]:
    """(the stream's completion id, its text)."""
    chunks = list(_ask(client, content, stream=True, **options))
    return chunks[0].id, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_stored_completions_are_kept_listed_updated_and_deleted_through_the_sdk(start_serving) -> None:
    served: LiveServing = start_serving()
    client = served.client()

    kept = _ask(client, "Who was born in the river town?", store=True, metadata={"team": "search", "run": "1"})
    not_asked = _ask(client, "Not stored: no store flag.")
    refused = _ask(client, "Not stored: store false.", store=False)
    stream_id, stream_text = _streamed(client, "A streamed question.", store=True, metadata={"team": "search"})
    system = client.chat.completions.create(
        model=DEMO_BASE_MODEL, temperature=0, max_tokens=120, store=True, metadata={"team": "tools"},
        messages=[{"role": "system", "content": "You call tools."},
                  {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Oslo?"}]}],
        tools=TOOLS, tool_choice="required")

    # Kept as returned: the response's own id, choices, usage; the metadata beside it.
    got = client.chat.completions.retrieve(kept.id)
    assert (got.id, got.model, got.choices[0].message.content) == (kept.id, DEMO_BASE_MODEL,
                                                                     kept.choices[0].message.content)
    assert got.usage.total_tokens == kept.usage.total_tokens
    assert got.metadata == {"team": "search", "run": "1"}
    for missing in (not_asked.id, refused.id):
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.retrieve(missing)

    # A stream is stored as the whole answer it streamed.
    streamed = client.chat.completions.retrieve(stream_id)
    assert streamed.choices[0].message.content == stream_text and streamed.usage.completion_tokens > 0

    # Tool calls and the tools are kept; content parts come back as parts beside their text.
    calls = client.chat.completions.retrieve(system.id).choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    messages = client.chat.completions.messages.list(system.id)
    assert [m.role for m in messages.data] == ["system", "user"]
    assert [m.id for m in messages.data] == [f"{system.id}-0", f"{system.id}-1"]
    assert messages.data[1].content == "Weather in Oslo?" and len(messages.data[1].content_parts) == 2
    newest = client.chat.completions.messages.list(system.id, order="desc", limit=1)
    assert [m.role for m in newest.data] == ["user"] and newest.has_more
    assert [m.role for m in client.chat.completions.messages.list(system.id, order="desc",
                                                                   after=newest.data[0].id).data] == ["system"]

    # The list: oldest first by default, filters by model and metadata, pages with after/limit.
    every = [c.id for c in client.chat.completions.list()]
    assert every == [kept.id, stream_id, system.id]
    assert [c.id for c in client.chat.completions.list(order="desc")] == every[::-1]
    assert [c.id for c in client.chat.completions.list(metadata={"team": "search"})] == [kept.id, stream_id]
    assert [c.id for c in client.chat.completions.list(metadata={"team": "search", "run": "1"})] == [kept.id]
    assert [c.id for c in client.chat.completions.list(model="ft:nothing")] == []
    first = client.chat.completions.list(limit=2)
    assert [c.id for c in first.data] == every[:2] and first.has_more
    assert [c.id for c in first.get_next_page().data] == every[2:]  # the SDK pages with after=<last id>

    # Metadata updates replace the metadata; the list filters on the new values.
    updated = client.chat.completions.update(kept.id, metadata={"team": "ranking"})
    assert updated.metadata == {"team": "ranking"}
    assert [c.id for c in client.chat.completions.list(metadata={"team": "search"})] == [stream_id]
    assert [c.id for c in client.chat.completions.list(metadata={"team": "ranking"})] == [kept.id]

    deleted = client.chat.completions.delete(kept.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (kept.id, True, "chat.completion.deleted")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(kept.id)
    assert [c.id for c in client.chat.completions.list()] == [stream_id, system.id]


def test_another_project_sees_none_of_them_and_bad_requests_store_nothing(start_serving) -> None:
    served: LiveServing = start_serving()
    client, other = served.client(), served.client(served.other_key)
    mine = _ask(client, "Mine.", store=True, metadata={"k": "v"})

    assert list(other.chat.completions.list()) == []
    assert list(other.chat.completions.list(metadata={"k": "v"})) == []
    for call in (lambda: other.chat.completions.retrieve(mine.id),
                 lambda: other.chat.completions.update(mine.id, metadata={"k": "stolen"}),
                 lambda: other.chat.completions.delete(mine.id),
                 lambda: other.chat.completions.messages.list(mine.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert client.chat.completions.retrieve(mine.id).metadata == {"k": "v"}

    # Requests that fail validation, or name a model the project cannot see, keep nothing.
    for bad in ({"temperature": 7}, {"metadata": {f"k{i}": "v" for i in range(17)}},
                {"metadata": {"k": "v" * 513}}, {"logit_bias": {"5": 1}}):
        with pytest.raises(openai.BadRequestError):
            _ask(client, "Invalid.", store=True, **bad)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="ft:not-mine", messages=[{"role": "user", "content": "x"}], store=True)
    assert [c.id for c in client.chat.completions.list()] == [mine.id]

    # Bad list and update parameters are 400s that name them.
    base = f"{served.base_url}/v1/chat/completions"
    headers = {"authorization": f"Bearer {served.key}"}
    for query, param in (({"order": "sideways"}, "order"), ({"limit": "0"}, "limit"), ({"after": "file-x"}, "after"),
                         ({"colour": "red"}, "colour")):
        answer = httpx.get(base, params=query, headers=headers)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text
    answer = httpx.post(f"{base}/{mine.id}", json={"metadata": {"k": 5}}, headers=headers)
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"
    answer = httpx.post(f"{base}/{mine.id}", json={"metadata": {}, "model": "x"}, headers=headers)
    assert answer.status_code == 400


def test_the_deployment_decides_whether_completions_are_kept_and_for_how_long(start_serving) -> None:
    never: LiveServing = start_serving(stored_completions_mode="never")
    with pytest.raises(openai.BadRequestError) as refused:
        _ask(never.client(), "Keep me.", store=True)
    assert refused.value.code == "stored_completions_disabled" and refused.value.param == "store"
    _ask(never.client(), "Fine.")
    assert list(never.client().chat.completions.list()) == []

    always: LiveServing = start_serving(stored_completions_mode="always", stored_completions_retention_days=1)
    client = always.client()
    implicit = _ask(client, "Kept without asking.")
    _ask(client, "Not kept: store false.", store=False)
    assert [c.id for c in client.chat.completions.list()] == [implicit.id]

    from worker.maintenance import Maintenance

    maintenance = Maintenance(always.services.db, always.services.store, None, always.settings)
    assert maintenance.expire_stored_completions(time.time()) == 0
    assert maintenance.expire_stored_completions(time.time() + 86400 + 5) == 1
    assert list(client.chat.completions.list()) == []


def test_stored_completions_export_as_a_validated_chat_training_file(start_serving) -> None:
    from worker.context import WorkerContext
    from worker.files.service import validate_file

    served: LiveServing = start_serving()
    client = served.client()
    before = int(time.time())
    answers = [_ask(client, f"Question {i}?", store=True, metadata={"set": "train"}, max_tokens=24) for i in range(10)]
    tool = client.chat.completions.create(
        model=DEMO_BASE_MODEL, temperature=0, max_tokens=120, store=True, metadata={"set": "train"},
        messages=[{"role": "developer", "content": "Use tools."}, {"role": "user", "content": "Weather in Oslo?"}],
        tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    _ask(client, "Other set.", store=True, metadata={"set": "other"})

    exported = client.post("/chat/completions/export", cast_to=object,
                           body={"metadata": {"set": "train"}, "created_after": before, "filename": "distill.jsonl",
                                 "include_truncated": True})
    assert exported["completions"] == 11 and exported["lines"] == 11 and exported["skipped"] == {}
    file = exported["file"]
    assert (file["filename"], file["purpose"], file["status"]) == ("distill.jsonl", "fine-tune", "uploaded")
    lines = [json.loads(line) for line in client.files.content(file["id"]).text.splitlines()]
    assert [line["messages"][-1]["content"] for line in lines[:10]] == [a.choices[0].message.content for a in answers]
    assert lines[0]["messages"][0] == {"role": "user", "content": "Question 0?"}
    assert lines[10]["tools"] == TOOLS and lines[10]["messages"][0] == {"role": "system", "content": "Use tools."}
    call = lines[10]["messages"][-1]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and call["id"] == tool.choices[0].message.tool_calls[0].id
    # The same validation as an upload: the worker's task accepts it.
    assert validate_file(WorkerContext(served.settings), file["id"]) == "processed"
    assert client.files.retrieve(file["id"]).status == "processed"

    # Answers cut off by max_tokens are left out unless asked for; an empty selection is a 400.
    default = client.post("/chat/completions/export", cast_to=object, body={"metadata": {"set": "train"}})
    assert default["lines"] + default["skipped"].get("length", 0) == 11
    with pytest.raises(openai.BadRequestError) as empty:
        client.post("/chat/completions/export", cast_to=object, body={"model": "ft:none"})
    assert empty.value.code == "no_stored_completions"
    with pytest.raises(openai.BadRequestError):
        client.post("/chat/completions/export", cast_to=object, body={"metadata": {"set": "train"}, "colour": 1})
