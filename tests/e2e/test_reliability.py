"""Worker loss and duplicate delivery: the database stays the truth, and each job trains exactly once."""

from __future__ import annotations

import csv
import io
import os
import signal

import pytest
import torch
from sqlalchemy import select

from db.outbox import RUN_JOB
from db.tables import FineTuningJob, Model
from tests.e2e.servers import LiveServer, stop_process_group, wait_for
from tests.factories import training_jsonl
from worker.app import create_celery_app

pytestmark = pytest.mark.slow


def job_row(server: LiveServer, job_id: str) -> FineTuningJob:
    database = server.database()
    try:
        with database.read() as session:
            return session.scalar(select(FineTuningJob).where(FineTuningJob.id == job_id))
    finally:
        database.dispose()


def test_a_job_whose_worker_is_sigkilled_resumes_from_its_checkpoint(embedded: LiveServer) -> None:
    client = embedded.client()
    file = client.files.wait_for_processing(
        client.files.create(file=("k.jsonl", training_jsonl(40)), purpose="fine-tune").id, poll_interval=0.2)
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 1}}}
    twin = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id, seed=31, method=method)
    twin = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(twin.id)).status in ("succeeded", "failed") and j,
                    timeout=180, what="the uninterrupted twin")
    job = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id, seed=31, method=method)
    wait_for(lambda: any(True for _ in client.fine_tuning.jobs.checkpoints.list(job.id)),
             what="the first epoch checkpoint")
    worker = embedded.gpu_worker()
    os.killpg(worker.pid, signal.SIGKILL)  # the whole worker (main process and pool child): node loss
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"  # nobody has noticed yet

    job = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
                   timeout=180, what="the job to recover and finish")
    assert job.status == "succeeded", job.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any(m.startswith("Worker lost (attempt 1 of 3)") for m in messages)
    assert "Fine-tuning job resumed (attempt 2)" in messages
    resumed_from = [int(m.rsplit(" ", 1)[1]) for m in messages if m.startswith("Resuming from the checkpoint at step")]
    assert len(resumed_from) == 1 and resumed_from[0] in (40, 80, 120)  # an epoch boundary, not step 0
    row = job_row(embedded, job.id)
    assert (row.attempt, row.lease_owner) == (2, None)
    rows = list(csv.DictReader(io.StringIO(client.files.content(job.result_files[0]).text)))
    assert [int(r["step"]) for r in rows] == list(range(1, 161))  # every step exactly once
    # Killed at step k and resumed: the same adapter and the same metrics rows as the uninterrupted twin.
    assert rows == list(csv.DictReader(io.StringIO(client.files.content(twin.result_files[0]).text)))
    expected, actual = embedded.adapter_of(twin.fine_tuned_model), embedded.adapter_of(job.fine_tuned_model)
    assert all(torch.allclose(expected[k], actual[k], atol=1e-6) for k in expected)
    assert embedded.gpu_worker().pid != worker.pid  # `ftaas up` restarted its worker


def test_duplicate_deliveries_train_a_job_exactly_once(cluster: LiveServer) -> None:
    extra_worker = cluster.spawn("worker", "--queues", "gpu")  # two GPU workers race for every message
    try:
        client = cluster.client()
        file = client.files.wait_for_processing(
            client.files.create(file=("d.jsonl", training_jsonl(12)), purpose="fine-tune").id, poll_interval=0.2)
        job = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id, method={
            "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}})
        assert client.fine_tuning.jobs.pause(job.id).status == "paused"
        publisher = create_celery_app(cluster.settings(), with_tasks=False)
        for _ in range(3):  # stale deliveries while paused: no-ops
            publisher.send_task(RUN_JOB.name, args=[job.id], queue=RUN_JOB.queue)
        wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "paused", what="paused")
        client.fine_tuning.jobs.resume(job.id)
        for _ in range(5):  # racing the relay's own message to both workers
            publisher.send_task(RUN_JOB.name, args=[job.id], queue=RUN_JOB.queue)

        job = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
                       what="the job to finish")
        assert job.status == "succeeded", job.error
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert messages.count("Fine-tuning job started") == 1
        assert not [m for m in messages if "resumed (attempt" in m]
        row = job_row(cluster, job.id)
        assert (row.attempt, row.fencing_token) == (1, 1)
        database = cluster.database()
        with database.read() as session:
            assert len(list(session.scalars(select(Model).where(Model.job_id == job.id)))) == 1
        database.dispose()
        steps = sorted(e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=100)
                       if e.type == "metrics")
        assert steps == list(range(1, 7))
    finally:
        stop_process_group(extra_worker)
        cluster.processes.remove(extra_worker)
