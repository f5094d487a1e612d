"""The outbox relay and the reaper, against a real Redis broker and a local artifact store."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select, update

from contracts.settings import Settings
from db import files, migrate, outbox
from db.session import Database
from db.states import JobStatus
from db.tables import File, FineTuningJob, OutboxMessage
from storage import open_store
from tests.conftest import redis_database
from tests.factories import make_file, make_job, make_project
from worker.app import create_celery_app
from worker.maintenance import Maintenance


@pytest.fixture
def broker(redis_url: str) -> Iterator[str]:
    """A Redis database of its own, so that no live worker consumes the messages under inspection."""
    url = redis_database(1)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def maintenance(tmp_path: Path, broker: str) -> Iterator[Maintenance]:
    settings = Settings(data_dir=tmp_path, broker_url=broker, redispatch_after_seconds=60)
    database = Database(settings.database.url, pool_size=2)
    migrate.upgrade(database)
    yield Maintenance(database, open_store(settings.storage.artifact_uri, settings.storage),
                      create_celery_app(settings, with_tasks=False), settings)
    database.dispose()


def queued_tasks(url: str, queue: str) -> list[tuple[str, list]]:
    client = redis.Redis.from_url(url)
    try:
        messages = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
    finally:
        client.close()
    return [(m["headers"]["task"], json.loads(m["headers"]["argsrepr"].replace("'", '"'))) for m in reversed(messages)]


def test_the_relay_publishes_each_committed_message_once(maintenance: Maintenance, broker: str) -> None:
    with maintenance.db.write() as session:
        project = make_project(session)
        file = make_file(session, project, status="uploaded")
        job = make_job(session, project, make_file(session, project), to=JobStatus.QUEUED)
    assert maintenance.relay_once() == 3  # validate the uploaded file, advance the job, run it
    assert maintenance.relay_once() == 0
    assert queued_tasks(broker, "gpu") == [(outbox.RUN_JOB.name, [job.id])]
    default = queued_tasks(broker, "default")
    assert (outbox.VALIDATE_FILE.name, [file.id]) in default and (outbox.ADVANCE_JOB.name, [job.id]) in default
    with maintenance.db.read() as session:
        assert all(m.published_at for m in session.scalars(select(OutboxMessage)))


def test_an_unreachable_broker_leaves_messages_in_the_outbox(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    database = Database(settings.database.url, pool_size=1)
    migrate.upgrade(database)
    relay = Maintenance(database, open_store(settings.storage.artifact_uri, settings.storage),
                        create_celery_app(settings, with_tasks=False), settings)
    with database.write() as session:
        outbox.add(session, outbox.RUN_JOB, "ftjob-x")
    assert relay.relay_once() == 0
    with database.read() as session:
        message = session.scalar(select(OutboxMessage))
        assert message.published_at is None and message.publish_attempts == 1 and message.last_error
    database.dispose()


def test_expired_files_are_deleted_unless_an_unfinished_job_reads_them(maintenance: Maintenance) -> None:
    with maintenance.db.write() as session:
        project = make_project(session)
        idle, in_use, fresh = (make_file(session, project) for _ in range(3))
        make_job(session, project, in_use, to=JobStatus.QUEUED)
        for row in (idle, in_use, fresh):
            key = f"files/{row.id}"
            maintenance.store.put_bytes(key, b"data")
            session.execute(update(File).where(File.id == row.id).values(
                storage_key=key, expires_at=int(time.time()) + (3600 if row is fresh else -1)))
    report = maintenance.reap_once()
    assert report.expired_files == 1
    with maintenance.db.read() as session:
        assert sorted(session.scalars(select(File.id))) == sorted([in_use.id, fresh.id])
        # Expired for the API; still readable by the worker of the job that uses it.
        assert files.get(session, project.id, in_use.id) is None
        assert files.get(session, project.id, in_use.id, include_expired=True) is not None
    assert maintenance.store.size_of(f"files/{idle.id}") is None
    assert maintenance.store.size_of(f"files/{in_use.id}") == 4


def test_work_whose_wake_up_seems_lost_is_announced_again(maintenance: Maintenance, broker: str) -> None:
    with maintenance.db.write() as session:
        project = make_project(session)
        job = make_job(session, project, make_file(session, project), to=JobStatus.QUEUED)
    maintenance.relay_once()
    assert maintenance.reap_once().redispatched == 0
    with maintenance.db.write() as session:
        session.execute(update(FineTuningJob).where(FineTuningJob.id == job.id).values(dispatched_at=time.time() - 120))
    assert maintenance.reap_once().redispatched == 1
    maintenance.relay_once()
    assert queued_tasks(broker, "gpu") == [(outbox.RUN_JOB.name, [job.id])] * 2
