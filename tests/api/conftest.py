"""An in-process API (no workers) on a migrated SQLite database and a local artifact store.

For the HTTP contract (errors, auth, limits, pagination, request validation). Flows that need workers
run against live servers in tests/e2e.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import build_services, create_app
from api.dependencies import ApiServices
from contracts.settings import Settings
from db import migrate, projects

MAX_UPLOAD = 256 * 1024


@dataclass
class Api:
    client: TestClient
    settings: Settings
    key: str
    other_key: str

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    @property
    def services(self) -> ApiServices:
        """The app's services (its database, to look behind the API)."""
        app = self.client.app
        assert isinstance(app, FastAPI)
        services: ApiServices = app.state.services
        return services


@contextmanager
def live_app(settings: Settings) -> Iterator[tuple[TestClient, str, str]]:
    """The API app on `settings` (migrated), with a key of project alpha and one of project beta."""
    services = build_services(settings)
    migrate.upgrade(services.db)
    with services.db.write() as session:
        _, key = projects.create_api_key(session, projects.ensure_project(session, "alpha"))
        _, other = projects.create_api_key(session, projects.ensure_project(session, "beta"))
    try:
        with TestClient(create_app(settings, services=services), raise_server_exceptions=False) as client:
            yield client, key, other
    finally:
        services.db.dispose()


@pytest.fixture
def api(tmp_path: Path, model_cache_dir: Path) -> Iterator[Api]:
    # The run's shared base models: validation counts a file's tokens under each base model's tokenizer.
    settings = Settings(data_dir=tmp_path, model_cache_dir=model_cache_dir, max_upload_bytes=MAX_UPLOAD, max_json_body_bytes=64 * 1024,
                        max_active_jobs_per_project=3)
    with live_app(settings) as (client, key, other):
        yield Api(client, settings, key, other)
