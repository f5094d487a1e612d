"""The API while a dependency is down: a prompt, retryable 503 that names the dependency and nothing more,
never a 200 cut off mid-body; readiness says which dependency failed, without addresses. The store is the
real S3 server behind a TCP proxy the test cuts (tests/faults.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from fastapi.testclient import TestClient

from api.app import build_services, create_app
from contracts.settings import Settings
from db import migrate, projects
from tests.conftest import S3_CREDENTIALS
from tests.faults import TcpProxy


@pytest.fixture
def proxied(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> Iterator[tuple[TestClient, TcpProxy, str]]:
    target = urlparse(s3_endpoint)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 80)
    settings = Settings(data_dir=tmp_path, artifact_uri=f"s3://{s3_bucket}/api", s3_endpoint_url=f"http://{proxy.address}",
                        s3_access_key_id=S3_CREDENTIALS["aws_access_key_id"],
                        s3_secret_access_key=S3_CREDENTIALS["aws_secret_access_key"])
    services = build_services(settings)
    migrate.upgrade(services.db)
    with services.db.write() as session:
        _, key = projects.create_api_key(session, projects.ensure_project(session, "alpha"))
    with TestClient(create_app(settings, services=services), raise_server_exceptions=False,
                    headers={"Authorization": f"Bearer {key}"}) as client:
        yield client, proxy, s3_bucket
    proxy.close()
    services.db.dispose()


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
