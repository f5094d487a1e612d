"""Knowledge evals in the database: one claim wins, fenced writes stop stale workers, the reaper hands
lost evals back (or fails them after their attempts), and messages go out with the state they announce."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from contracts.errors import IllegalTransition, LeaseLost
from db import ids, knowledge_evals
from db.session import Database
from db.tables import KnowledgeEval, OutboxMessage
from tests.factories import make_project


def new_eval(database: Database, *, max_attempts: int = 2) -> str:
    with database.write() as session:
        project = make_project(session)
        row = KnowledgeEval(id=ids.new_id(ids.KNOWLEDGE_EVAL), project_id=project.id, model="ftaas-tiny",
                            base_model="ftaas-tiny", status="queued", spec={"name": "x"}, spec_name="x",
                            spec_sha256="0" * 64, result_files=[], created_at=int(time.time()), attempt=0,
                            max_attempts=max_attempts, fencing_token=0)
        knowledge_evals.insert(session, row, dispatch=True)
        return row.id


def messages(database: Database, eval_id: str) -> int:
    with database.read() as session:
        return sum(m.args == [eval_id] for m in session.scalars(select(OutboxMessage)))


def test_creation_announces_the_eval_and_exactly_one_claim_wins(migrated_database: Database) -> None:
    eval_id = new_eval(migrated_database)
    assert messages(migrated_database, eval_id) == 1
    with migrated_database.write() as session:
        first = knowledge_evals.claim(session, eval_id, owner="a", ttl=30)
    with migrated_database.write() as session:
        second = knowledge_evals.claim(session, eval_id, owner="b", ttl=30)
    assert first is not None and first.token == 1 and second is None


def test_a_cancelled_eval_stops_its_worker_at_the_next_write(migrated_database: Database) -> None:
    eval_id = new_eval(migrated_database)
    with migrated_database.write() as session:
        lease = knowledge_evals.claim(session, eval_id, owner="a", ttl=30)
        row = knowledge_evals.get_any_project(session, eval_id)
    assert lease is not None and row is not None
    with migrated_database.write() as session:
        assert knowledge_evals.cancel(session, row).status == "cancelled"
    with pytest.raises(LeaseLost), migrated_database.write() as session:
        knowledge_evals.heartbeat(session, lease, ttl=30, progress_done=3)
    with pytest.raises(LeaseLost), migrated_database.write() as session:
        knowledge_evals.complete(session, lease, summary={}, result_files=[])
    with migrated_database.write() as session:
        assert knowledge_evals.cancel(session, row).status == "cancelled"  # idempotent


def test_a_finished_eval_cannot_be_cancelled(migrated_database: Database) -> None:
    eval_id = new_eval(migrated_database)
    with migrated_database.write() as session:
        lease = knowledge_evals.claim(session, eval_id, owner="a", ttl=30)
        assert lease is not None
        knowledge_evals.complete(session, lease, summary={"memorization": {}}, result_files=["file-x"])
        row = knowledge_evals.get_any_project(session, eval_id)
    assert row is not None
    with pytest.raises(IllegalTransition), migrated_database.write() as session:
        knowledge_evals.cancel(session, row)


def test_the_reaper_requeues_a_lost_eval_then_fails_it_after_its_attempts(migrated_database: Database) -> None:
    eval_id = new_eval(migrated_database, max_attempts=2)
    for attempt in (1, 2):
        with migrated_database.write() as session:
            lease = knowledge_evals.claim(session, eval_id, owner=f"w{attempt}", ttl=0.01)
        assert lease is not None and lease.attempt == attempt
        with migrated_database.write() as session:
            assert [r.row.id for r in knowledge_evals.reap_expired_leases(session, now=time.time() + 1)] == [eval_id]
        with pytest.raises(LeaseLost), migrated_database.write() as session:  # the old worker's late write
            knowledge_evals.heartbeat(session, lease, ttl=30)
    with migrated_database.read() as session:
        row = knowledge_evals.get_any_project(session, eval_id)
        assert row is not None and row.status == "failed" and row.error["code"] == "worker_lost"
    assert messages(migrated_database, eval_id) == 2  # created, then re-queued once


def test_a_released_eval_goes_back_to_the_queue_with_a_new_message(migrated_database: Database) -> None:
    eval_id = new_eval(migrated_database)
    with migrated_database.write() as session:
        lease = knowledge_evals.claim(session, eval_id, owner="a", ttl=30)
        assert lease is not None
        knowledge_evals.release(session, lease, counts_as_attempt=False)
    with migrated_database.read() as session:
        row = knowledge_evals.get_any_project(session, eval_id)
        assert row is not None and row.status == "queued" and row.attempt == 0
    assert messages(migrated_database, eval_id) == 2


def test_an_attached_eval_ends_with_its_cancelled_job(migrated_database: Database) -> None:
    from db import jobs
    from tests.factories import make_file, make_job

    with migrated_database.write() as session:
        project = make_project(session)
        job = make_job(session, project, make_file(session, project), to="running")
        row = KnowledgeEval(id=ids.new_id(ids.KNOWLEDGE_EVAL), project_id=project.id, model="ft:x", job_id=job.id,
                            base_model="ftaas-tiny", status="running", spec={"name": "x"}, spec_name="x",
                            spec_sha256="0" * 64, result_files=[], created_at=int(time.time()), attempt=1,
                            max_attempts=1, fencing_token=0)
        knowledge_evals.insert(session, row, dispatch=False)
    assert messages(migrated_database, row.id) == 0  # the job's worker runs it, no task of its own
    with migrated_database.write() as session:
        jobs.cancel(session, jobs.QUEUE.reload(session, job.id))
    with migrated_database.read() as session:
        assert knowledge_evals.QUEUE.reload(session, row.id).status == "cancelled"
