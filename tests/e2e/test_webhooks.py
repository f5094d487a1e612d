"""Webhooks on a live deployment (`ftaas up`, and the cluster topology on PostgreSQL and Redis): a project's
endpoint receives its jobs' endings signed by Standard Webhooks, which OpenAI's own SDK verifies and parses."""

from __future__ import annotations

import json

import openai
import pytest

from tests.e2e.servers import LiveServer, upload_processed, wait_for
from tests.factories import training_jsonl
from tests.worker.test_webhooks import Receiver, receiver  # noqa: F401 (the fixture)

pytestmark = pytest.mark.slow


def test_an_endpoint_receives_signed_job_endings(live: LiveServer, receiver: Receiver) -> None:  # noqa: F811
    client = live.client()
    with live.http() as api:
        made = api.post("/webhooks", json={"url": receiver.url, "event_types": [
            "fine_tuning.job.succeeded", "fine_tuning.job.cancelled"]})
        assert made.status_code == 200, made.text
        endpoint = made.json()
    file = upload_processed(client, "hooks.jsonl", training_jsonl(10))
    hyper = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 5}}}
    trained = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id, method=hyper)
    cancelled = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id, method=hyper)
    client.fine_tuning.jobs.cancel(cancelled.id)
    wait_for(lambda: client.fine_tuning.jobs.retrieve(trained.id).status in ("succeeded", "failed"), timeout=240,
             what="the job to finish")
    wait_for(lambda: len(receiver.received) >= 2, timeout=60, what="both webhooks")

    verifier = openai.OpenAI(api_key="unused", webhook_secret=endpoint["secret"])
    events = {}
    for body, headers in receiver.received:
        event = verifier.webhooks.unwrap(body.decode(), headers)  # raises on a bad signature
        events[event.data.id] = event.type
        assert headers["webhook-id"] == json.loads(body)["id"]
    assert events == {trained.id: "fine_tuning.job.succeeded", cancelled.id: "fine_tuning.job.cancelled"}

    with live.http() as api:
        log = api.get(f"/webhooks/{endpoint['id']}/deliveries").json()["data"]
        assert sorted(d["event_type"] for d in log) == ["fine_tuning.job.cancelled", "fine_tuning.job.succeeded"]
        assert all(d["status"] == "delivered" and d["last_status_code"] == 200 for d in log)
        assert api.delete(f"/webhooks/{endpoint['id']}").json()["deleted"] is True
