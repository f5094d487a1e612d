"""Webhook delivery: work that ends is announced, signed by Standard Webhooks, delivered at least once with
retries and backoff, and an unreachable endpoint holds up nothing but itself.

Real collaborators: the migrated database (SQLite and PostgreSQL), the real dispatcher, a real HTTP receiver
on a local port, and the `standardwebhooks` library verifying what arrives.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
from standardwebhooks.webhooks import Webhook

from contracts.settings import Settings
from db import jobs, webhooks
from db.leased import Lease
from db.session import Database
from db.tables import WebhookDelivery
from tests.factories import make_file, make_job, make_project
from worker.webhooks import WebhookDispatcher, retry_delay


@dataclass
class Receiver:
    """An HTTP endpoint that answers with the next scripted status (then 200) and keeps what it got."""

    url: str
    statuses: list[int] = field(default_factory=list)
    received: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["content-length"]))
            state.received.append((body, {k.lower(): v for k, v in self.headers.items()}))
            state.paths.append(self.path)
            self.send_response(state.statuses.pop(0) if state.statuses else 200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state
    server.shutdown()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/gone"


def _settings(tmp_path: Any, **overrides: Any) -> Settings:
    options = {"webhook_allow_private_networks": True, "webhook_retry_base_seconds": 0.05,
               "webhook_timeout_seconds": 2.0, "webhook_max_attempts": 3, **overrides}
    return Settings(data_dir=tmp_path, **options)


def _deliver_until(dispatcher: WebhookDispatcher, done: Any, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < end, "deliveries did not settle"
        dispatcher.deliver_due()
        time.sleep(0.05)


def _rows(db: Database) -> list[WebhookDelivery]:
    with db.read() as session:
        rows = list(session.query(WebhookDelivery).order_by(WebhookDelivery.id))
        session.expunge_all()
        return rows


def test_a_finished_job_is_delivered_signed_and_retried_with_the_same_id(
        migrated_database: Database, receiver: Receiver, tmp_path: Any) -> None:
    db = migrated_database
    with db.write() as session:
        project = make_project(session)
        endpoint = webhooks.create_endpoint(session, project.id, url=receiver.url, event_types=None, description=None)
        secret, endpoint_id = endpoint.secret, endpoint.id
        other = make_project(session)  # another project's endpoint hears nothing of this job
        webhooks.create_endpoint(session, other.id, url=receiver.url + "/other", event_types=None, description=None)
        job = make_job(session, project, make_file(session, project), to="running")
        lease = Lease(job.id, project.id, "factory", job.fencing_token, job.attempt)
        jobs.complete(session, lease, fine_tuned_model="ft:x", trained_tokens=10, result_files=[])
    receiver.statuses = [503]  # the first attempt fails: the event is sent again, identically signed

    dispatcher = WebhookDispatcher(db, _settings(tmp_path))
    _deliver_until(dispatcher, lambda: len(receiver.received) == 2)
    (first_body, first), (body, headers) = receiver.received
    assert first["webhook-id"] == headers["webhook-id"] and first_body == body
    verified = Webhook(secret).verify(body, headers)  # raises on a bad signature or a stale timestamp
    assert verified["type"] == "fine_tuning.job.succeeded" and verified["data"] == {"id": job.id}
    assert verified["object"] == "event" and verified["id"] == headers["webhook-id"].strip()
    with pytest.raises(Exception):
        Webhook(webhooks.new_secret()).verify(body, headers)
    # OpenAI's own SDK takes it as the event it documents (code written against OpenAI's webhooks moves over)
    event = openai.OpenAI(api_key="unused", webhook_secret=secret).webhooks.unwrap(body.decode(), headers)
    assert type(event).__name__ == "FineTuningJobSucceededWebhookEvent" and event.data.id == job.id
    [row] = [r for r in _rows(db) if r.endpoint_id == endpoint_id]
    assert row.delivered_at is not None and row.attempts == 2 and row.last_status == 200
    dispatcher.deliver_due()
    assert receiver.paths == ["/hooks", "/hooks"]  # the other project's endpoint heard nothing


def test_cancelled_and_failed_work_is_announced_to_endpoints_that_take_it(
        migrated_database: Database, receiver: Receiver, tmp_path: Any) -> None:
    db = migrated_database
    with db.write() as session:
        project = make_project(session)
        webhooks.create_endpoint(session, project.id, url=receiver.url, event_types=["fine_tuning.job.cancelled"],
                                 description="cancellations only")
        cancelled = make_job(session, project, make_file(session, project), to="queued")
        jobs.cancel(session, cancelled)
        failing = make_job(session, project, make_file(session, project), to="running")
        jobs.fail(session, Lease(failing.id, project.id, "factory", failing.fencing_token, failing.attempt),
                  {"code": "x", "message": "boom", "param": None})
    dispatcher = WebhookDispatcher(db, _settings(tmp_path))
    _deliver_until(dispatcher, lambda: len(receiver.received) == 1)
    dispatcher.deliver_due()
    assert [json.loads(b)["type"] for b, _ in receiver.received] == ["fine_tuning.job.cancelled"]
    assert json.loads(receiver.received[0][0])["data"]["id"] == cancelled.id


def test_an_unreachable_endpoint_is_retried_with_backoff_then_abandoned_and_blocks_nothing(
        migrated_database: Database, receiver: Receiver, tmp_path: Any) -> None:
    db = migrated_database
    with db.write() as session:
        project = make_project(session)
        webhooks.create_endpoint(session, project.id, url=_closed_port_url(), event_types=None, description=None)
        webhooks.create_endpoint(session, project.id, url=receiver.url, event_types=None, description=None)
        job = make_job(session, project, make_file(session, project), to="queued")
        jobs.cancel(session, job)  # the job's own state change commits whatever happens to its webhooks
    dispatcher = WebhookDispatcher(db, _settings(tmp_path))
    dispatcher.deliver_due()
    assert len(receiver.received) == 1  # the good endpoint got it on the first round
    _deliver_until(dispatcher, lambda: any(r.abandoned_at for r in _rows(db)))
    dead = next(r for r in _rows(db) if r.abandoned_at)
    assert dead.attempts == 3 and dead.delivered_at is None and "Connect" in (dead.last_error or "")
    assert len(receiver.received) == 1  # delivered once, never again
    with db.read() as session:
        assert jobs.get_any_project(session, job.id).status == "cancelled"


def test_backoff_grows_fourfold_with_jitter_and_is_capped() -> None:
    import random

    rng = random.Random(1)
    delays = [retry_delay(n, 5.0, rng=rng) for n in range(1, 12)]
    assert 4 <= delays[0] <= 6 and 16 <= delays[1] <= 24 and 64 <= delays[2] <= 96
    assert max(delays) <= 24 * 3600 * 1.2


def test_a_delivery_is_claimed_by_one_dispatcher_at_a_time(migrated_database: Database) -> None:
    db = migrated_database
    with db.write() as session:
        project = make_project(session)
        webhooks.create_endpoint(session, project.id, url="http://example.com/", event_types=None, description=None)
        webhooks.announce(session, project.id, "adapter_operation.succeeded", {"id": "adop_1"})
    now = time.time()
    with db.write() as session:
        first = webhooks.claim_due(session, now=now, claim_seconds=60)
    with db.write() as session:
        second = webhooks.claim_due(session, now=now + 1, claim_seconds=60)
    assert len(first) == 1 and second == []
    with db.write() as session:  # a dispatcher that died after claiming: the row comes back after the window
        assert len(webhooks.claim_due(session, now=now + 61, claim_seconds=60)) == 1


def test_evals_and_adapter_operations_announce_their_endings_including_a_reaped_one(
        migrated_database: Database) -> None:
    from db import adapter_operations, ids, knowledge_evals
    from db.tables import AdapterOperation, KnowledgeEval

    db = migrated_database
    with db.write() as session:
        project = make_project(session)
        webhooks.create_endpoint(session, project.id, url="http://example.com/", event_types=None, description=None)
        evaluation = KnowledgeEval(id=ids.new_id(ids.KNOWLEDGE_EVAL), project_id=project.id, model="ftaas-tiny",
                                   base_model="ftaas-tiny", status="queued", spec={"name": "x"}, spec_name="x",
                                   spec_sha256="0" * 64, result_files=[], created_at=int(time.time()), attempt=0,
                                   max_attempts=1, fencing_token=0)
        knowledge_evals.insert(session, evaluation, dispatch=True)
        operation = AdapterOperation(id=ids.new_id(ids.ADAPTER_OPERATION), project_id=project.id, type="merge",
                                     status="queued", base_model="ftaas-tiny", params={}, created_at=int(time.time()),
                                     attempt=0, max_attempts=1, fencing_token=0)
        adapter_operations.QUEUE.insert(session, operation, dispatch=True)
        eval_id, operation_id = evaluation.id, operation.id
    with db.write() as session:
        lease = knowledge_evals.claim(session, eval_id, owner="w", ttl=30)
        assert lease is not None
        knowledge_evals.complete(session, lease, summary={}, result_files=[])
        assert adapter_operations.QUEUE.claim(session, operation_id, owner="w", ttl=0.01) is not None
    time.sleep(0.05)
    with db.write() as session:  # the operation's worker is lost on its last attempt: the reaper fails it
        assert [r.outcome for r in adapter_operations.QUEUE.reap_expired_leases(session)] == ["failed"]
    with db.read() as session:
        announced = {(r.payload["data"]["id"], r.event_type) for r in session.query(WebhookDelivery)}
    assert announced == {(eval_id, "knowledge_eval.succeeded"), (operation_id, "adapter_operation.failed")}
