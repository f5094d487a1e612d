"""The job state machine, leases and fencing tokens, on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import time

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from contracts.errors import IllegalTransition, LeaseLost
from db import jobs, migrate, outbox
from db.session import Database
from db.states import TERMINAL, TRANSITIONS, JobStatus
from db.tables import FineTuningJob, OutboxMessage
from tests.factories import make_file, make_job, make_project

S = JobStatus


def status_of(database: Database, job_id: str) -> str:
    with database.read() as session:
        return session.scalar(select(FineTuningJob.status).where(FineTuningJob.id == job_id))


def test_terminal_statuses_have_no_way_out_and_every_status_is_covered() -> None:
    assert set(TRANSITIONS) == set(JobStatus)
    assert all(not TRANSITIONS[status] for status in TERMINAL)


def test_the_database_refuses_illegal_transitions_on_its_own(migrated_database: Database) -> None:
    with migrated_database.write() as session:
        project = make_project(session)
        job = make_job(session, project, make_file(session, project))
    with pytest.raises(IntegrityError, match="illegal"), migrated_database.write() as session:
        session.execute(update(FineTuningJob).where(FineTuningJob.id == job.id).values(status="succeeded"))
    with migrated_database.write() as session:
        session.execute(update(FineTuningJob).where(FineTuningJob.id == job.id).values(status="cancelled"))
    with pytest.raises(IntegrityError, match="illegal"), migrated_database.write() as session:
        session.execute(update(FineTuningJob).where(FineTuningJob.id == job.id).values(status="queued"))
    assert status_of(migrated_database, job.id) == "cancelled"


def test_the_database_refuses_a_job_born_in_a_later_status(migrated_database: Database) -> None:
    with migrated_database.write() as session:
        project = make_project(session)
        job = make_job(session, project, make_file(session, project))
    with pytest.raises(IntegrityError), migrated_database.write() as session:
        session.execute(text(
            "INSERT INTO fine_tuning_jobs (id, project_id, base_model, training_file_id, status, method, "
            "hyperparameters, seed, model_name_id, result_files, created_at, attempt, max_attempts, fencing_token) "
            "SELECT 'ftjob-x', project_id, base_model, training_file_id, 'running', method, hyperparameters, seed, "
            "model_name_id, result_files, created_at, 0, 3, 0 FROM fine_tuning_jobs WHERE id = :id"), {"id": job.id})


def test_creating_a_job_writes_its_events_and_wake_up_message_atomically(migrated_database: Database) -> None:
    with migrated_database.write() as session:
        project = make_project(session)
        job = make_job(session, project, make_file(session, project))
    with migrated_database.read() as session:
        messages = list(session.scalars(select(OutboxMessage)))
        assert [(m.task, m.args) for m in messages if m.args == [job.id]] == [(outbox.ADVANCE_JOB.name, [job.id])]


def test_cancel_is_immediate_repeatable_and_refused_after_success(migrated_database: Database) -> None:
    with migrated_database.write() as session:
        project = make_project(session)
        running = make_job(session, project, make_file(session, project), to=S.RUNNING)
        done = make_job(session, project, make_file(session, project), to=S.RUNNING)
        lease = jobs.Lease(done.id, project.id, "factory", done.fencing_token, done.attempt)
        jobs.complete(session, lease, fine_tuned_model="ft:x", trained_tokens=1, result_files=[])
    for _ in range(3):
        with migrated_database.write() as session:
            job = jobs.cancel(session, jobs.get_any_project(session, running.id))
        assert job.status == S.CANCELLED and job.lease_owner is None and job.finished_at is not None
    with pytest.raises(IllegalTransition), migrated_database.write() as session:
        jobs.cancel(session, jobs.get_any_project(session, done.id))
    assert status_of(migrated_database, done.id) == S.SUCCEEDED


def test_pause_depends_on_whether_the_job_is_running_and_resume_is_idempotent(migrated_database: Database) -> None:
    with migrated_database.write() as session:
        project = make_project(session)
        running = make_job(session, project, make_file(session, project), to=S.RUNNING)
        waiting = make_job(session, project, make_file(session, project), to=S.QUEUED)
        validating = make_job(session, project, make_file(session, project))
    with migrated_database.write() as session:
        assert jobs.pause(session, jobs.get_any_project(session, running.id)).status == S.PAUSING
        assert jobs.pause(session, jobs.get_any_project(session, waiting.id)).status == S.PAUSED
        assert jobs.pause(session, jobs.get_any_project(session, validating.id)).status == S.PAUSED
    with pytest.raises(IllegalTransition, match="still pausing"), migrated_database.write() as session:
        jobs.resume(session, jobs.get_any_project(session, running.id))
    with migrated_database.write() as session:
        # A job paused before its files were validated goes back to validation; a validated one to the queue.
        assert jobs.resume(session, jobs.get_any_project(session, validating.id)).status == S.VALIDATING_FILES
        assert jobs.resume(session, jobs.get_any_project(session, waiting.id)).status == S.QUEUED
        assert jobs.resume(session, jobs.get_any_project(session, waiting.id)).status == S.QUEUED


def _claim_all(url: str, job_ids: list[str], owner: str, results: multiprocessing.Queue) -> None:
    database = Database(url, pool_size=1)
    wins, errors = [], []
    for job_id in job_ids:
        try:
            with database.write() as session:
                if jobs.claim(session, job_id, owner=owner, ttl=60) is not None:
                    wins.append(job_id)
        except Exception as exc:  # collected: the test asserts there were none
            errors.append(repr(exc))
    database.dispose()
    results.put((owner, wins, errors))


def test_each_job_is_claimed_exactly_once_by_competing_processes(migrated_database: Database) -> None:
    with migrated_database.write() as session:
        project = make_project(session)
        file = make_file(session, project)
        job_ids = [make_job(session, project, file, to=S.QUEUED).id for _ in range(30)]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_claim_all, args=(migrated_database.url, job_ids, f"w{i}", results))
               for i in range(4)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    all_errors = [e for _, _, errors in outcomes for e in errors]
    assert all_errors == []  # in particular no "database is locked" on SQLite
    wins = [job_id for _, won, _ in outcomes for job_id in won]
    assert sorted(wins) == sorted(job_ids)
    with migrated_database.read() as session:
        assert {j.fencing_token for j in session.scalars(select(FineTuningJob))} == {1}


def test_a_stale_worker_cannot_write_once_its_job_was_reclaimed(migrated_database: Database) -> None:
    with migrated_database.write() as session:
        project = make_project(session)
        job = make_job(session, project, make_file(session, project), to=S.QUEUED)
    with migrated_database.write() as session:
        old = jobs.claim(session, job.id, owner="old", ttl=1)
    assert old is not None
    with migrated_database.write() as session:
        # The old worker stops renewing; after its lease expires the reaper re-queues the job.
        assert [r.outcome for r in jobs.reap_expired_leases(session, now=time.time() + 5)] == ["requeued"]
    with migrated_database.write() as session:
        new = jobs.claim(session, job.id, owner="new", ttl=60)
    assert new is not None and new.token == old.token + 1 and new.attempt == 2
    for stale_write in (
        lambda s: jobs.heartbeat(s, old, ttl=60),
        lambda s: jobs.add_event(s, old, "x") or jobs.heartbeat(s, old, ttl=60),
        lambda s: jobs.complete(s, old, fine_tuned_model="ft:old", trained_tokens=1, result_files=[]),
        lambda s: jobs.fail(s, old, jobs.error_object("x", "y")),
    ):
        with pytest.raises(LeaseLost), migrated_database.write() as session:
            stale_write(session)
    with migrated_database.write() as session:
        assert jobs.heartbeat(session, new, ttl=60) == S.RUNNING
        jobs.complete(session, new, fine_tuned_model="ft:new", trained_tokens=5, result_files=[])
    with migrated_database.read() as session:
        final = jobs.get_any_project(session, job.id)
        assert (final.status, final.fine_tuned_model, final.lease_owner) == (S.SUCCEEDED, "ft:new", None)


def test_the_reaper_requeues_until_max_attempts_then_fails_with_worker_lost(migrated_database: Database) -> None:
    with migrated_database.write() as session:
        project = make_project(session)
        job = make_job(session, project, make_file(session, project), to=S.QUEUED, max_attempts=2)
    outcomes = []
    for _ in range(2):
        with migrated_database.write() as session:
            assert jobs.claim(session, job.id, owner="w", ttl=1) is not None
        with migrated_database.write() as session:
            outcomes += [r.outcome for r in jobs.reap_expired_leases(session, now=time.time() + 5)]
    assert outcomes == ["requeued", "failed"]
    with migrated_database.read() as session:
        final = jobs.get_any_project(session, job.id)
        assert final.status == S.FAILED and final.error["code"] == "worker_lost" and final.lease_owner is None
        wake_ups = [m.args for m in session.scalars(select(OutboxMessage).where(
            OutboxMessage.task == outbox.RUN_JOB.name))]
        assert wake_ups.count([job.id]) == 2  # queued once by validation, once by the reaper


def test_a_live_lease_is_left_alone_and_a_job_lost_while_pausing_is_parked(migrated_database: Database) -> None:
    with migrated_database.write() as session:
        project = make_project(session)
        healthy = make_job(session, project, make_file(session, project), to=S.RUNNING)
        pausing = make_job(session, project, make_file(session, project), to=S.RUNNING)
        jobs.pause(session, pausing)
    with migrated_database.write() as session:
        assert jobs.reap_expired_leases(session, now=time.time()) == []
        reaped = jobs.reap_expired_leases(session, now=time.time() + 120)
    assert {(r.row.id, r.outcome) for r in reaped} == {(healthy.id, "requeued"), (pausing.id, "parked")}


def test_concurrent_relays_on_postgresql_claim_disjoint_messages(make_postgres_database) -> None:
    # (On SQLite, relays are serialised by BEGIN IMMEDIATE instead.)
    database = Database(make_postgres_database(), pool_size=2)
    migrate.upgrade(database)
    with database.write() as session:
        for i in range(10):
            outbox.add(session, outbox.RUN_JOB, f"job-{i}")
    with database.write() as first, database.write() as second:
        a = outbox.claim_unpublished(first, 6)
        b = outbox.claim_unpublished(second, 10)
    assert len(a) == 6 and len(b) == 4 and not {m.id for m in a} & {m.id for m in b}
    database.dispose()
