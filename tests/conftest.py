"""Shared fixtures: real PostgreSQL, Redis and S3-over-HTTP (moto server), and a tiny-model cache.

Where the services live comes from the test environment (TEST_POSTGRES_URL, TEST_REDIS_URL; not FTAAS_*
names, which every deployment a test starts reads and refuses when unknown), defaulting to the local servers
that `.ci/run` starts. A missing service fails the tests that need it
loudly instead of skipping them: a green run must mean every collaborator was exercised.
"""

from __future__ import annotations

import contextlib
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

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: Whether pytest-xdist runs this process (as worker gw0, gw1, ...), and which worker (0 outside xdist).
UNDER_XDIST = "PYTEST_XDIST_WORKER" in os.environ
XDIST_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))


def redis_database(number: int) -> str:
    """The URL of this test process's Redis database `number` (0 or 1): each xdist worker owns two
    databases counted up from the one TEST_REDIS_URL names, so no worker flushes or consumes another's
    messages."""
    base, first = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/11").rsplit("/", 1)
    database = int(first) + 2 * XDIST_WORKER + number
    if database > 15:  # a Redis server has databases 0-15 unless configured otherwise
        raise pytest.UsageError(f"worker gw{XDIST_WORKER} would use Redis database {database}: name a lower first "
                                f"database in TEST_REDIS_URL (two per worker) or run fewer workers")
    return f"{base}/{database}"


REDIS_URL = redis_database(0)
S3_CREDENTIALS = {"aws_access_key_id": "ftaas-test", "aws_secret_access_key": "ftaas-test-secret"}

ROOT = Path(__file__).resolve().parent.parent

# Under xdist every test process, and every server and worker process a test starts, computes on one thread.
# Two processes with an OpenMP team of two each on CI's two cores spin against each other (libgomp busy-waits
# for work between parallel regions): the README quickstart's fine-tune took over ten minutes instead of 1.5.
if UNDER_XDIST:
    os.environ["OMP_NUM_THREADS"] = "1"

# CI replays the same examples every run, so a red build is reproducible; local runs keep exploring.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


# First: xdist reads the groups `distribute` marks in its own hook of this name.
@pytest.hookimpl(tryfirst=True)
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
    distribute(items)


#: Fixtures that make a fine-tune (tests/e2e/): every module using one runs in the same xdist worker, so each
#: fine-tune is made once per run, and the longest groups come first: the function-calling fine-tune with the
#: migration that distills it (two fine-tunes of the real model, about 400 s), then the real model's facts.
SHARED_FINE_TUNES = {"tools_job": "function-calling-fine-tunes", "quickstart": "real-model-fine-tune",
                     "evaluated_job": "demo-fine-tunes", "finished_job": "demo-fine-tunes"}


def distribute(items: list[pytest.Item]) -> None:
    """Group and order the tests for the two xdist workers (`-n 2 --dist loadgroup --no-loadscope-reorder`
    in pyproject.toml): a module is the unit of work (its module-scoped fixtures are built once), modules
    sharing a fine-tune go together, and the longest groups start first (the shared fine-tunes, then the
    other end-to-end modules, then the worker's), so the short tests fill in at the end and both workers
    finish at about the same time. The per-test durations behind this order are in docs/testing.md."""
    ranked_shared = list(dict.fromkeys(SHARED_FINE_TUNES.values()))
    module_group: dict[str, str] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        candidates = [module_group.get(module, module)] + [
            SHARED_FINE_TUNES[name] for name in getattr(item, "fixturenames", ()) if name in SHARED_FINE_TUNES]
        module_group[module] = min(candidates, key=lambda g: ranked_shared.index(g) if g in ranked_shared else 99)

    def group(item: pytest.Item) -> str:
        return module_group[item.nodeid.split("::", 1)[0]]

    def weight(item: pytest.Item) -> int:
        name = group(item)
        if name in ranked_shared:
            return ranked_shared.index(name)
        return len(ranked_shared) + (0 if name.startswith("tests/e2e/") else 1 if name.startswith("tests/worker/") else 2)

    for item in items:
        item.add_marker(pytest.mark.xdist_group(group(item)))
    items.sort(key=weight)  # stable: within a weight, the collection order stays


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


@contextlib.contextmanager
def created_database(postgres_server: str, prefix: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database of its own (its URL), dropped afterwards: a deployment a test starts
    gets one, so that no other deployment's relay or reaper acts on its rows."""
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_server.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def make_postgres_database(postgres_server: str) -> Iterator:
    """Factory for fresh, empty PostgreSQL databases; all dropped at teardown."""
    with contextlib.ExitStack() as created:
        yield lambda: created.enter_context(created_database(postgres_server, "ftaas_test"))


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
    command installs it; tests of the real model fail, not skip, without it). Under xdist the workers share
    one copy (`build_once` makes concurrent builders wait for the first)."""
    from basemodels import smollm2, tiny

    run_root = tmp_path_factory.getbasetemp()
    if UNDER_XDIST:
        run_root = run_root.parent  # xdist gives each worker <run root>/popen-gwN
    directory = run_root / "model-cache"
    directory.mkdir(exist_ok=True)
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
