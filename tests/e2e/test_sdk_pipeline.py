"""The unmodified official `openai` SDK drives a live ftaas end to end, on both deployments."""

from __future__ import annotations

import csv
import io
import re
import time

import openai
import pytest

from db import models as model_rows
from tests.e2e.servers import LiveServer, wait_for
from tests.factories import training_jsonl

pytestmark = pytest.mark.slow

TERMINAL = {"succeeded", "failed", "cancelled"}


def wait_terminal(client: openai.OpenAI, job_id: str, timeout: float = 180):
    return wait_for(lambda: (job := client.fine_tuning.jobs.retrieve(job_id)).status in TERMINAL and job,
                    timeout=timeout, what=f"job {job_id} to finish")


def test_upload_fine_tune_follow_and_manage_the_model(live: LiveServer) -> None:
    client = live.client()
    file = client.files.create(file=("facts.jsonl", training_jsonl(12)), purpose="fine-tune")
    assert file.status == "uploaded" and file.purpose == "fine-tune"
    file = client.files.wait_for_processing(file.id, poll_interval=0.2, max_wait_seconds=60)
    assert file.status == "processed"

    job = client.fine_tuning.jobs.create(
        model="ftaas-tiny", training_file=file.id, suffix="e2e", seed=7, metadata={"case": live.kind},
        method={"type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 5}}})
    assert job.status == "validating_files" and job.hyperparameters.batch_size == 4
    job = wait_terminal(client, job.id)
    assert job.status == "succeeded", job.error
    assert re.fullmatch(r"ft:ftaas-tiny:default:e2e:[A-Za-z0-9]{8}", job.fine_tuned_model)
    assert job.hyperparameters.n_epochs == 3 and job.hyperparameters.learning_rate_multiplier == 5
    assert job.trained_tokens > 0 and job.finished_at >= job.created_at and job.estimated_finish is None
    assert len(job.result_files) == 1 and job.error is None

    # Auto-pagination over small pages terminates and yields every event once, newest first.
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=4))
    assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)
    assert len({e.id for e in events}) == len(events)
    messages = [e.message for e in reversed(events)]
    assert messages[:4] == [f"Created fine-tuning job: {job.id}", f"Validating training file: {file.id}",
                            "Files validated, moving job to queued state", "Fine-tuning job started"]
    assert messages[-2:] == [f"New fine-tuned model created: {job.fine_tuned_model}", "The job has successfully completed"]
    metrics = [e for e in events if e.type == "metrics"]
    assert sorted(e.data["step"] for e in metrics) == list(range(1, 10))  # 12 examples / 4 per batch * 3 epochs
    assert all(e.data["total_steps"] == 9 and "train_loss" in e.data for e in metrics)

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [9, 6, 3]
    assert [c.fine_tuned_model_checkpoint for c in checkpoints] == [f"{job.fine_tuned_model}:ckpt-step-{s}" for s in (9, 6, 3)]
    assert all(c.metrics.train_loss is not None for c in checkpoints)

    results = client.files.retrieve(job.result_files[0])
    assert results.purpose == "fine-tune-results" and results.status == "processed"
    rows = list(csv.DictReader(io.StringIO(client.files.content(results.id).text)))
    assert [int(r["step"]) for r in rows] == list(range(1, 10))
    assert list(rows[0]) == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy",
                             "full_valid_loss", "full_valid_mean_token_accuracy", "full_train_loss",
                             "full_train_mean_token_accuracy"]
    # The final pass over the training data fills the last row's full_train_* columns, and is an event.
    assert rows[-1]["full_train_mean_token_accuracy"] and not rows[0]["full_train_mean_token_accuracy"]
    assert any(m.startswith("Final training token accuracy on assistant tokens: ") for m in messages)

    listed = [m.id for m in client.models.list()]
    assert listed[0] == "ftaas-tiny" and job.fine_tuned_model in listed
    model = client.models.retrieve(job.fine_tuned_model)
    assert (model.id, model.object) == (job.fine_tuned_model, "model")
    # ftaas's extensions: the base model and where the model came from (absent from base models' objects)
    assert (model.base_model, model.provenance) == ("ftaas-tiny", {"type": "fine_tuning_job", "fine_tuning_job": job.id})
    assert "provenance" not in client.models.retrieve("ftaas-tiny").model_dump()
    checkpoint = client.models.retrieve(checkpoints[-1].fine_tuned_model_checkpoint)
    assert checkpoint.id.endswith(":ckpt-step-3")
    assert checkpoint.provenance == {"type": "fine_tuning_checkpoint", "fine_tuning_job": job.id, "step": 3}

    if live.kind == "embedded":  # serving runs in-process under `ftaas up`
        reply = client.chat.completions.create(model=job.fine_tuned_model, temperature=0, max_tokens=12,
                                               messages=[{"role": "user", "content": "What is the access code of agent 3?"}])
        assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens > 0
        chunks = list(client.chat.completions.create(
            model=checkpoints[-1].fine_tuned_model_checkpoint, temperature=0, max_tokens=8, stream=True,
            stream_options={"include_usage": True}, messages=[{"role": "user", "content": "Hello"}]))
        assert chunks[-1].usage is not None and chunks[-1].choices == []

    database = live.database()
    with database.read() as session:
        prefix = next(m.storage_prefix for m in model_rows.list_for_project(session, job.organization_id)
                      if m.id == job.fine_tuned_model)
    database.dispose()
    deleted = client.models.delete(job.fine_tuned_model)
    assert deleted.deleted and deleted.id == job.fine_tuned_model
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(job.fine_tuned_model)
    assert job.fine_tuned_model not in [m.id for m in client.models.list()]
    assert live.store().list_keys(prefix) == []


def test_cancel_a_queued_job_and_a_running_job(live: LiveServer) -> None:
    client = live.client()
    long_file = client.files.wait_for_processing(
        client.files.create(file=("long.jsonl", training_jsonl(200)), purpose="fine-tune").id, poll_interval=0.2)
    short_file = client.files.wait_for_processing(
        client.files.create(file=("short.jsonl", training_jsonl(10)), purpose="fine-tune").id, poll_interval=0.2)
    hyper = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 20, "batch_size": 1}}}
    running = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=long_file.id, method=hyper)

    def metric_steps() -> int:
        return sum(1 for e in client.fine_tuning.jobs.list_events(running.id, limit=100) if e.type == "metrics")

    wait_for(lambda: metric_steps() >= 3, what="the long job to train a few steps")
    queued = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=short_file.id)
    wait_for(lambda: client.fine_tuning.jobs.retrieve(queued.id).status == "queued", what="the second job to queue")

    assert client.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
    cancelled_at = time.monotonic()
    assert client.fine_tuning.jobs.cancel(running.id).status == "cancelled"
    # The worker stops within a step: the count of metrics events stops growing at once.
    settled = metric_steps()
    time.sleep(2.0)
    assert metric_steps() - settled <= 1
    again = client.fine_tuning.jobs.cancel(running.id)  # repeat cancel is a no-op
    assert again.status == "cancelled" and again.finished_at is not None and again.fine_tuned_model is None

    # The freed worker takes the next job; the cancelled queued job never started.
    follow_up = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=short_file.id,
                                               method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}})
    assert wait_terminal(client, follow_up.id).status == "succeeded"
    assert time.monotonic() - cancelled_at < 120
    queued_messages = [e.message for e in client.fine_tuning.jobs.list_events(queued.id)]
    assert "Fine-tuning job started" not in queued_messages and "Fine-tuning job cancelled" in queued_messages
    assert client.fine_tuning.jobs.retrieve(queued.id).fine_tuned_model is None

