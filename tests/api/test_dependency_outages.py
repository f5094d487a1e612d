"""The API while a dependency is down or stalled: a prompt, retryable 503 that names the dependency and
nothing more, never a hang or a 200 cut off mid-body; readiness says which dependency failed, without
addresses; liveness touches none. Real S3 server, PostgreSQL and Redis behind TCP proxies the tests cut and
stall (tests/faults.py)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import build_services, create_app
from contracts.settings import Settings
from db import migrate, projects
from db.session import POSTGRES_TIMEOUTS, STALL_GRACE_SECONDS
from tests.conftest import S3_CREDENTIALS
from tests.faults import TcpProxy

S3_READ_TIMEOUT = 1.5
STATEMENT_TIMEOUT = 1.0


@contextlib.contextmanager
def served_api(settings: Settings) -> Iterator[TestClient]:
    """The API on `settings`, migrated, with a key of project alpha in every request."""
    services = build_services(settings)
    migrate.upgrade(services.db)
    with services.db.write() as session:
        _, key = projects.create_api_key(session, projects.ensure_project(session, "alpha"))
    try:
        with TestClient(create_app(settings, services=services), raise_server_exceptions=False,
                        headers={"Authorization": f"Bearer {key}"}) as client:
            yield client
    finally:
        services.db.dispose()


@pytest.fixture
def proxied(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> Iterator[tuple[TestClient, TcpProxy, str]]:
    proxy, endpoint = TcpProxy.in_front_of(s3_endpoint)
    settings = Settings(data_dir=tmp_path, artifact_uri=f"s3://{s3_bucket}/api", s3_endpoint_url=endpoint,
                        s3_access_key_id=S3_CREDENTIALS["aws_access_key_id"],
                        s3_secret_access_key=S3_CREDENTIALS["aws_secret_access_key"],
                        s3_read_timeout_seconds=S3_READ_TIMEOUT)
    with served_api(settings) as client:
        yield client, proxy, s3_bucket
    proxy.close()


def test_a_download_while_the_store_is_down_is_a_503_before_any_header(proxied: tuple[TestClient, TcpProxy, str]) -> None:
    client, proxy, bucket = proxied
    uploaded = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("d.jsonl", b'{"a": 1}\n')})
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    assert client.get(f"/v1/files/{file_id}/content").content == b'{"a": 1}\n'
    with proxy.outage("cut"):
        started = time.monotonic()
        reply = client.get(f"/v1/files/{file_id}/content")
        elapsed = time.monotonic() - started
    assert reply.status_code == 503, (reply.status_code, reply.text)
    assert reply.headers["retry-after"] and elapsed < 10, elapsed
    error = reply.json()["error"]
    assert error["code"] == "storage_unavailable" and error["message"] == "The artifact store is unavailable; retry later."
    assert bucket not in reply.text and proxy.address not in reply.text


def test_readiness_names_the_failed_dependency_without_its_address(proxied: tuple[TestClient, TcpProxy, str]) -> None:
    client, proxy, bucket = proxied
    assert client.get("/health/ready").status_code == 200
    with proxy.outage("cut"):
        reply = client.get("/health/ready")
        live = client.get("/health/live")
    assert reply.status_code == 503 and live.status_code == 200
    checks = reply.json()["checks"]
    assert checks["database"] == "ok" and checks["artifact_store"].startswith("failed: "), checks
    assert bucket not in reply.text and proxy.address not in reply.text and "127.0.0.1" not in reply.text


def test_a_stalled_store_gives_a_503_within_its_read_timeouts(proxied: tuple[TestClient, TcpProxy, str]) -> None:
    client, proxy, _ = proxied
    uploaded = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("d.jsonl", b'{"a": 1}\n')})
    file_id = uploaded.json()["id"]
    with proxy.outage("stall"):
        started = time.monotonic()
        reply = client.get(f"/v1/files/{file_id}/content")
        elapsed = time.monotonic() - started
        live_started = time.monotonic()
        assert client.get("/health/live").status_code == 200
        assert time.monotonic() - live_started < 0.5
    assert reply.status_code == 503 and reply.headers["retry-after"], reply.text
    assert reply.json()["error"]["code"] == "storage_unavailable"
    # two tries of the read timeout, boto3's backoff between them (up to 1 s) and the connects: measured up to 6.2 s
    assert elapsed < 2 * S3_READ_TIMEOUT + 6, elapsed
    assert client.get(f"/v1/files/{file_id}/content").status_code == 200


@pytest.fixture
def proxied_database_and_broker(tmp_path: Path, make_postgres_database, redis_url: str,
                                ) -> Iterator[tuple[TestClient, TcpProxy, TcpProxy]]:
    database_proxy, database_url = TcpProxy.in_front_of(make_postgres_database())
    broker_proxy, broker_url = TcpProxy.in_front_of(redis_url)
    settings = Settings(data_dir=tmp_path, database_statement_timeout_seconds=STATEMENT_TIMEOUT,
                        database_url=database_url, broker_url=broker_url)
    with served_api(settings) as client:
        yield client, database_proxy, broker_proxy
    database_proxy.close()
    broker_proxy.close()


def timed(client: TestClient, path: str) -> tuple[int, str, float]:
    started = time.monotonic()
    reply = client.get(path)
    return reply.status_code, reply.text, time.monotonic() - started


def test_a_stalled_database_gives_a_prompt_503_and_readiness_says_so(
        proxied_database_and_broker: tuple[TestClient, TcpProxy, TcpProxy]) -> None:
    client, database, _ = proxied_database_and_broker
    assert client.get("/v1/files").status_code == 200  # a pooled connection exists
    with database.outage("stall"):
        answers = [timed(client, "/v1/files"), timed(client, "/v1/fine_tuning/jobs")]
        live = timed(client, "/health/live")
        ready = timed(client, "/health/ready")
    for status, body, elapsed in answers:
        assert status == 503 and '"database_unavailable"' in body, body
        # the pooled connection's stall deadline, then new connections' connect timeout
        assert elapsed < STATEMENT_TIMEOUT + STALL_GRACE_SECONDS + POSTGRES_TIMEOUTS["connect_seconds"] + 1, answers
    assert live[0] == 200 and live[2] < 0.5, live
    assert ready[0] == 503 and '"failed: database_unavailable"' in ready[1], ready
    assert database.address not in ready[1] + answers[0][1]
    assert client.get("/v1/files").status_code == 200


def test_a_stalled_broker_costs_an_api_request_at_most_the_rate_limiters_timeout(
        proxied_database_and_broker: tuple[TestClient, TcpProxy, TcpProxy]) -> None:
    """The API needs Redis only to count rate limits, and counts open (lets requests through) without it."""
    client, _, broker = proxied_database_and_broker
    with broker.outage("stall"):
        answers = [timed(client, "/v1/files") for _ in range(3)]
    assert all(status == 200 and elapsed < 2.5 for status, _, elapsed in answers), answers
