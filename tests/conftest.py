"""Shared fixtures: real PostgreSQL, Redis and S3-over-HTTP (moto server), and a tiny-model cache.

Where the services live comes from the test environment (FTAAS_TEST_POSTGRES_URL, FTAAS_TEST_REDIS_URL),
defaulting to the local servers that `.ci/run` starts. A missing service fails the tests that need it
loudly instead of skipping them: a green run must mean every collaborator was exercised.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from hypothesis import settings as hypothesis_settings
from sqlalchemy import create_engine, text

from db import migrate
from db.session import Database

POSTGRES_ADMIN_URL = os.environ.get("FTAAS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("FTAAS_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
S3_CREDENTIALS = {"aws_access_key_id": "ftaas-test", "aws_secret_access_key": "ftaas-test-secret"}

ROOT = Path(__file__).resolve().parent.parent

# CI replays the same examples every run, so a red build is reproducible; local runs keep exploring.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the servers it needs (`-m "not postgres and not redis"` selects the others): by
    the fixtures it uses, and by its parameters where a fixture picks a deployment at run time."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        params = set(map(str, getattr(getattr(item, "callspec", None), "params", {}).values()))
        if "postgres_server" in names or params & {"postgresql", "cluster"}:
            item.add_marker(pytest.mark.postgres)
        if "redis_url" in names or "cluster" in params:
            item.add_marker(pytest.mark.redis)


# ------------------------------------------------------------------------------------------ postgres
@pytest.fixture(scope="session")
def postgres_server() -> str:
    engine = create_engine(POSTGRES_ADMIN_URL)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # pragma: no cover - environment problem, reported clearly
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}. Start it (see .ci/run).")
    finally:
        engine.dispose()
    return POSTGRES_ADMIN_URL


@pytest.fixture
def make_postgres_database(postgres_server: str) -> Iterator:
    """Factory for fresh, empty PostgreSQL databases; all dropped at teardown."""
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    created: list[str] = []

    def make() -> str:
        name = f"ftaas_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return postgres_server.rsplit("/", 1)[0] + "/" + name

    yield make
    with admin.connect() as connection:
        for name in created:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database on each backend (the same migrations run on both)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
    else:
        url = request.getfixturevalue("make_postgres_database")()
    database = Database(url, pool_size=4)
    migrate.upgrade(database)
    yield database
    database.dispose()


# --------------------------------------------------------------------------------------------- redis
@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except Exception as exc:  # pragma: no cover
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}. Start it (see .ci/run).")
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


# ------------------------------------------------------------------------------------------- S3/moto
@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible HTTP server (moto in server mode): ftaas talks to it through real boto3 calls."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    name = f"ftaas-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **S3_CREDENTIALS).create_bucket(Bucket=name)
    return name


# ---------------------------------------------------------------------------------------- tiny model
@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One materialised copy of the built-in base models for the whole run (servers share it via settings):
    the demo model, and the packaged real model where its weights package is installed (the README's test
    command installs it; tests of the real model fail, not skip, without it)."""
    from basemodels import smollm2, tiny

    directory = tmp_path_factory.mktemp("model-cache")
    tiny.ensure_built(directory)
    if smollm2.is_installed():
        smollm2.ensure_built(directory)
    return directory


@pytest.fixture(scope="session")
def loader(model_cache_dir: Path) -> Any:
    """The demo base model's loader (training and serving tests)."""
    from basemodels.loader import BaseModelLoader
    from basemodels.registry import BaseModelRegistry
    from contracts.settings import DEMO_BASE_MODEL, DEMO_BASE_MODEL_SOURCE

    return BaseModelLoader(BaseModelRegistry({DEMO_BASE_MODEL: DEMO_BASE_MODEL_SOURCE}), model_cache_dir)


@pytest.fixture(scope="session")
def tokenizer(loader: Any) -> Any:
    from contracts.settings import DEMO_BASE_MODEL

    return loader.load_tokenizer(DEMO_BASE_MODEL)
