"""Request rate limits per API key and per project: a 429 with `Retry-After` and `x-ratelimit-*` headers,
which the official SDK honours (it waits and retries); counted in Redis so that API replicas share them."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import uvicorn

from api.app import build_services, create_app
from contracts.settings import Settings
from db import migrate, projects
from tests.e2e.servers import free_port


class Served:
    def __init__(self, settings: Settings, services: Any, port: int, keys: dict[str, str]) -> None:
        self.settings, self.services, self.port, self.keys = settings, services, port, keys

    def client(self, key: str, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=self.keys[key], **options)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """serve(database_dir, **settings) -> an API server (several may share one database, as replicas do)."""
    servers: list[tuple[uvicorn.Server, threading.Thread, Any]] = []

    def start(data_dir: Path, **overrides: Any) -> Served:
        settings = Settings(data_dir=data_dir, **overrides)
        services = build_services(settings)
        migrate.upgrade(services.db)
        keys = {}
        with services.db.write() as session:
            alpha = projects.ensure_project(session, "alpha")
            for name, project in (("a1", alpha), ("a2", alpha), ("b", projects.ensure_project(session, "beta"))):
                keys[name] = f"sk-ftaas-rate-limits-{name}-" + "x" * 20
                projects.create_api_key(session, project, name=name, plaintext=keys[name])
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(settings, services=services), host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        servers.append((server, thread, services))
        return Served(settings, services, port, keys)

    yield start
    for server, thread, services in servers:
        server.should_exit = True
        thread.join(timeout=10)
        services.db.dispose()


def test_a_key_over_its_limit_gets_an_openai_shaped_429_and_other_keys_do_not(serve: Callable[..., Served],
                                                                              tmp_path: Path) -> None:
    served = serve(tmp_path, rate_limit_requests_per_key=3, rate_limit_window_seconds=30)
    client = served.client("a1", max_retries=0)
    for _ in range(3):
        client.models.list()
    with pytest.raises(openai.RateLimitError) as limited:
        client.models.list()
    response = limited.value.response
    assert limited.value.code == "rate_limit_exceeded" and limited.value.body["type"] == "requests"
    assert 1 <= int(response.headers["retry-after"]) <= 30
    assert response.headers["x-ratelimit-limit-requests"] == "3"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert re.fullmatch(r"\d+(\.\d+)?s|\d+ms", response.headers["x-ratelimit-reset-requests"])
    served.client("a2", max_retries=0).models.list()  # another key of the same project has its own count
    served.client("b", max_retries=0).models.list()


def test_every_answer_carries_the_keys_remaining_requests(serve: Callable[..., Served], tmp_path: Path) -> None:
    """As OpenAI does: the SDK's raw response shows the limit, what is left and when it resets."""
    served = serve(tmp_path, rate_limit_requests_per_key=10, rate_limit_window_seconds=30)
    client = served.client("a1", max_retries=0)
    remaining = []
    for _ in range(3):
        raw = client.models.with_raw_response.list()
        assert raw.headers["x-ratelimit-limit-requests"] == "10"
        assert re.fullmatch(r"\d+(\.\d+)?s|\d+ms", raw.headers["x-ratelimit-reset-requests"])
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [9, 8, 7]
    with pytest.raises(openai.NotFoundError) as missing:  # errors after authentication carry them too
        client.files.retrieve("file-missing")
    assert missing.value.response.headers["x-ratelimit-remaining-requests"] == "6"


def test_the_sdk_waits_out_the_limit_and_retries(serve: Callable[..., Served], tmp_path: Path) -> None:
    served = serve(tmp_path, rate_limit_requests_per_key=2, rate_limit_window_seconds=2)
    client = served.client("a1", max_retries=3)
    started = time.monotonic()
    for _ in range(4):  # two over the limit: each waits for the window the server names
        client.models.list()
    assert time.monotonic() - started >= 1


def test_a_project_limit_counts_all_its_keys(serve: Callable[..., Served], tmp_path: Path) -> None:
    served = serve(tmp_path, rate_limit_requests_per_key=0, rate_limit_requests_per_project=3,
                   rate_limit_window_seconds=30)
    served.client("a1", max_retries=0).models.list()
    served.client("a2", max_retries=0).models.list()
    served.client("a1", max_retries=0).models.list()
    with pytest.raises(openai.RateLimitError):
        served.client("a2", max_retries=0).models.list()
    served.client("b", max_retries=0).models.list()  # another project


def test_replicas_share_the_counts_through_redis(serve: Callable[..., Served], tmp_path: Path, redis_url: str) -> None:
    options = {"rate_limit_requests_per_key": 4, "rate_limit_window_seconds": 30, "broker_url": redis_url,
               "database_url": f"sqlite:///{tmp_path / 'shared.db'}"}
    first, second = serve(tmp_path / "one", **options), serve(tmp_path / "two", **options)
    unique = f"-{time.time_ns()}"  # this run's keys: earlier runs' counts in Redis do not apply
    for served in (first, second):
        served.keys = {name: key + unique for name, key in served.keys.items()}
    with first.services.db.write() as session:
        alpha = projects.ensure_project(session, "alpha")
        projects.create_api_key(session, alpha, name="run", plaintext=first.keys["a1"])
    for served in (first, second, first, second):
        served.client("a1", max_retries=0).models.list()
    for served in (first, second):
        with pytest.raises(openai.RateLimitError):
            served.client("a1", max_retries=0).models.list()
