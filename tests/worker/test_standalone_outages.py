"""Knowledge evals and adapter operations spend no attempt on an outage of the store either: their reads and
writes of the store and the database wait it out (worker.outages), and they succeed on their first attempt.
The store is the real S3 server behind a TCP proxy the test cuts (tests/faults.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from db.tables import AdapterOperation, KnowledgeEval
from evals.builtin import generate_suite
from evals.items import dump_suite
from tests.conftest import S3_CREDENTIALS
from tests.faults import TcpProxy
from worker.adapter_operations.service import run_operation
from worker.context import WorkerContext
from worker.knowledge_evals.service import run_standalone

OUTAGE_SECONDS = 5


@pytest.fixture
def live_on_s3(start_serving: Any, s3_endpoint: str, s3_bucket: str) -> Iterator[tuple[Any, TcpProxy]]:
    proxy, endpoint = TcpProxy.in_front_of(s3_endpoint)
    live = start_serving(artifact_uri=f"s3://{s3_bucket}/ftaas", s3_endpoint_url=endpoint,
                         s3_access_key_id=S3_CREDENTIALS["aws_access_key_id"],
                         s3_secret_access_key=S3_CREDENTIALS["aws_secret_access_key"], s3_read_timeout_seconds=2)
    yield live, proxy
    proxy.close()


def attempt(live: Any, table: type, work_id: str) -> int:
    with live.services.db.read() as session:
        return session.get(table, work_id).attempt


def through_an_outage(proxy: TcpProxy, run: Callable[[], str]) -> tuple[str, float]:
    """`run()` with the store cut from its start for OUTAGE_SECONDS: (its outcome, seconds it took)."""
    proxy.cut()
    threading.Timer(OUTAGE_SECONDS, proxy.restore).start()
    started = time.monotonic()
    outcome = run()
    return outcome, time.monotonic() - started


def test_an_adapter_operation_waits_out_a_store_outage(live_on_s3: tuple[Any, TcpProxy], make_adapter: Any) -> None:
    live, proxy = live_on_s3
    model = live.register(make_adapter(41), "outage")
    with httpx.Client(base_url=live.base_url + "/v1", headers={"Authorization": f"Bearer {live.key}"}) as client:
        operation = client.post("/adapter_operations", json={"type": "compress", "model": model, "density": 0.2}).json()
        outcome, took = through_an_outage(proxy, lambda: run_operation(WorkerContext(live.settings), operation["id"]))
        done = client.get(f"/adapter_operations/{operation['id']}").json()
    assert outcome == "succeeded" and took >= OUTAGE_SECONDS, (outcome, took)
    assert done["status"] == "succeeded" and attempt(live, AdapterOperation, operation["id"]) == 1, done


def test_a_knowledge_eval_waits_out_a_store_outage(live_on_s3: tuple[Any, TcpProxy], make_adapter: Any) -> None:
    live, proxy = live_on_s3
    tuned = live.register(make_adapter(42), "outage-eval")
    with httpx.Client(base_url=live.base_url + "/v1", headers={"Authorization": f"Bearer {live.key}"}) as client:
        suite = client.post("/files", data={"purpose": "evals"},
                            files={"file": ("suite.jsonl", dump_suite(generate_suite("api_renames", seed=4, size=2)))})
        created = client.post("/knowledge_evals", json={"model": tuned, "suites": [suite.json()["id"]],
                                                        "max_new_tokens": 4}).json()
        outcome, took = through_an_outage(proxy, lambda: run_standalone(WorkerContext(live.settings), created["id"]))
        done = client.get(f"/knowledge_evals/{created['id']}").json()
        report = client.get(f"/knowledge_evals/{created['id']}/report")
    assert outcome == "succeeded" and took >= OUTAGE_SECONDS, (outcome, took)
    assert done["status"] == "succeeded" and attempt(live, KnowledgeEval, created["id"]) == 1, done
    assert report.status_code == 200
