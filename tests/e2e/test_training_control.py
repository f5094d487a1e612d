"""Training options through the SDK, and pause/resume/preemption ending exactly like an uninterrupted run."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import time
from typing import Any

import openai
import psutil
import pytest
import torch
from sqlalchemy import select

from db.tables import FineTuningJob
from tests.e2e.servers import LiveServer, stop_process_group, upload_processed, wait_for
from tests.factories import training_jsonl

pytestmark = pytest.mark.slow

TERMINAL = ("succeeded", "failed", "cancelled")


def finished(client: openai.OpenAI, job_id: str, timeout: float = 240):
    return wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job_id)).status in TERMINAL and j,
                    timeout=timeout, what=f"job {job_id} to finish")


def metric_steps(client: openai.OpenAI, job_id: str) -> int:
    return sum(1 for e in client.fine_tuning.jobs.list_events(job_id, limit=100) if e.type == "metrics")


def results(client: openai.OpenAI, job) -> list[dict]:
    return list(csv.DictReader(io.StringIO(client.files.content(job.result_files[0]).text)))


def same_adapter(server: LiveServer, first: str, second: str) -> bool:
    a, b = server.adapter_of(first), server.adapter_of(second)
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_training_options_travel_in_extra_body(embedded: LiveServer) -> None:
    client = embedded.client()
    file = upload_processed(client, "o.jsonl", training_jsonl(12))
    job = client.fine_tuning.jobs.create(
        model="ftaas-tiny", training_file=file.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
        extra_body={"method": {"type": "supervised", "supervised": {
            "hyperparameters": {"n_epochs": 2, "batch_size": 4},
            "adapter": {"type": "dora", "r": 4, "target_modules": ["q_proj", "v_proj"]},
            "lr_scheduler": "cosine", "warmup_ratio": 0.1, "n_checkpoints": 2}}})
    recorded = job.model_dump()["method"]["supervised"]
    assert recorded["adapter"]["type"] == "dora" and recorded["adapter"]["r"] == 4
    job = finished(client, job.id)
    assert job.status == "succeeded", job.error
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)] == [6, 3]
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id, extra_body={"method": {
            "type": "supervised", "supervised": {"adapter": {"type": "ia3", "r": 4}}}})
    assert refused.value.param == "method.supervised.adapter"


def test_pause_and_resume_end_exactly_like_an_uninterrupted_run(embedded: LiveServer) -> None:
    client = embedded.client()
    file = upload_processed(client, "p.jsonl", training_jsonl(40, offset=200))
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 2}}}
    twin = finished(client, client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id, seed=77,
                                                          method=method).id)
    job = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id, seed=77, method=method)
    wait_for(lambda: metric_steps(client, job.id) >= 25, what="a few steps")
    running = client.fine_tuning.jobs.retrieve(job.id)
    assert running.status == "running" and running.estimated_finish > time.time() - 1

    assert client.fine_tuning.jobs.pause(job.id).status == "pausing"
    paused = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status == "paused" and j, what="paused")
    assert paused.estimated_finish is None
    parked_at = next(e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)
                     if e.message.startswith("Fine-tuning job paused at step"))
    steps_when_paused = metric_steps(client, job.id)
    time.sleep(1.0)
    assert metric_steps(client, job.id) == steps_when_paused  # nothing trains while paused

    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    job = finished(client, job.id)
    assert job.status == "succeeded", job.error
    step = int(parked_at.rsplit(" ", 1)[1])
    assert f"Resuming from the checkpoint at step {step}" in [e.message for e in client.fine_tuning.jobs.list_events(
        job.id, limit=100)]
    assert same_adapter(embedded, twin.fine_tuned_model, job.fine_tuned_model)
    assert results(client, job) == results(client, twin) and job.trained_tokens == twin.trained_tokens


def test_a_paused_and_resumed_reinforcement_job_ends_exactly_like_an_uninterrupted_one(embedded: LiveServer) -> None:
    """The job-level path of a GRPO job (the trainer-level exact resume: tests/worker/test_reinforcement.py):
    pause through the API, a checkpoint, resume on the queue, and the same samples, rewards and adapter as a
    twin that never stopped."""
    client = embedded.client()
    rows = [{"messages": [{"role": "user", "content": f"Say something, number {i}."}], "target": "a a a a a a"}
            for i in range(12)]
    file = upload_processed(client, "rft.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    grader = {"type": "text_similarity", "name": "a", "input": "{{sample.output_text}}",
              "reference": "{{item.target}}", "evaluation_metric": "fuzzy_match"}
    method = {"type": "reinforcement", "reinforcement": {
        "grader": grader, "hyperparameters": {"n_epochs": 3, "batch_size": 2, "compute_multiplier": 0.5},
        "max_completion_tokens": 8}}
    twin = finished(client, client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id, seed=5,
                                                          method=method).id)
    assert twin.status == "succeeded", twin.error
    job = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id, seed=5, method=method)
    wait_for(lambda: metric_steps(client, job.id) >= 5, what="a few steps")
    assert client.fine_tuning.jobs.pause(job.id).status == "pausing"
    wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "paused", what="paused")
    assert metric_steps(client, job.id) < 18
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    job = finished(client, job.id)
    assert job.status == "succeeded", job.error
    assert any(e.message.startswith("Resuming from the checkpoint at step")
               for e in client.fine_tuning.jobs.list_events(job.id, limit=100))
    resumed, straight = results(client, job), results(client, twin)
    assert len(straight) == 18 and resumed == straight and straight[-1]["train_reward_mean"]
    assert same_adapter(embedded, twin.fine_tuned_model, job.fine_tuned_model)


def test_a_spin_job_runs_its_rounds_through_the_worker_and_reports_them(embedded: LiveServer) -> None:
    """SPIN through the SDK: one supervised pass, then two rounds of one pass each on the model's own answers;
    the results CSV carries the rounds and the published model serves."""
    client = embedded.client()
    file = upload_processed(client, "spin.jsonl", training_jsonl(10, offset=300))
    job = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id, seed=3, method={
        "type": "supervised", "supervised": {
            "hyperparameters": {"n_epochs": 1, "batch_size": 5},
            "self_play": {"iterations": 2, "sft_epochs": 1, "max_completion_tokens": 8}}})
    job = finished(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.method.supervised.hyperparameters.n_epochs == 1
    rows = results(client, job)
    assert [row["self_play_round"] for row in rows] == ["", "", "1", "1", "2", "2"]
    assert all(0 < float(row["response_length"]) <= 8 for row in rows[2:])
    reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=4,
                                           messages=[{"role": "user", "content": "What is the access code?"}])
    assert reply.choices[0].message.content is not None


def pool_process_running(cluster: LiveServer, job_id: str) -> psutil.Process:
    """The Celery pool process that holds the job's lease (its owner is "host:pid")."""
    database = cluster.database()
    with database.read() as session:
        owner = session.scalar(select(FineTuningJob.lease_owner).where(FineTuningJob.id == job_id))
    database.dispose()
    return psutil.Process(int(owner.rsplit(":", 1)[1]))


def handed_back_and_resumed_without_an_attempt(client: Any, job_id: str) -> tuple[Any, list[str]]:
    """The finished job and its events, after checking it checkpointed, went back to the queue and resumed
    from that checkpoint without spending an attempt."""
    job = finished(client, job_id)
    assert job.status == "succeeded", job.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=100)]
    requeued = next(m for m in messages if m.startswith("Job re-queued: the worker is shutting down"))
    step = int(requeued.split("checkpoint saved at step ")[1].split(",")[0])
    assert f"Resuming from the checkpoint at step {step}" in messages
    assert "Fine-tuning job resumed (attempt 1)" in messages, messages  # preemption costs no attempt
    assert not any(m.startswith("Worker lost") for m in messages), messages
    return job, messages


def test_sigterm_checkpoints_and_another_worker_resumes(cluster: LiveServer) -> None:
    client = cluster.client()
    second_worker = cluster.spawn("worker", "--queues", "gpu")
    try:
        file = upload_processed(client, "s.jsonl", training_jsonl(40, offset=500))
        method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 2}}}
        twin = finished(client, client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id, seed=5,
                                                              method=method).id)
        job = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id, seed=5, method=method)
        wait_for(lambda: metric_steps(client, job.id) >= 15, what="a few steps")
        worker_main = pool_process_running(cluster, job.id).parent()
        os.kill(worker_main.pid, signal.SIGTERM)  # as Kubernetes does: the container's main process only
        worker_main.wait(timeout=60)  # it exits once the job is checkpointed and handed back

        job, _ = handed_back_and_resumed_without_an_attempt(client, job.id)
        assert same_adapter(cluster, twin.fine_tuned_model, job.fine_tuned_model)
        assert results(client, job) == results(client, twin)
    finally:
        # Leave the shared cluster with one live GPU worker, whichever of the two was stopped.
        for process in [p for p in cluster.processes if p.poll() is not None]:
            cluster.processes.remove(process)
        gpu_workers = [p for p in cluster.processes if "gpu" in p.args]
        if len(gpu_workers) > 1:
            stop_process_group(second_worker)
            cluster.processes.remove(second_worker)


def test_sigterm_to_the_pool_process_itself_checkpoints_and_costs_no_attempt(cluster: LiveServer) -> None:
    """What Celery does when it loses the broker mid-task (it terminates the task it can no longer
    acknowledge), and what a signal to the whole process group does: the real pool process running the job
    gets SIGTERM. The job checkpoints at its next step and goes back to the queue, its attempt not spent."""
    client = cluster.client()
    file = upload_processed(client, "t.jsonl", training_jsonl(40, offset=900))
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 2}}}
    job = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id, seed=7, method=method)
    wait_for(lambda: metric_steps(client, job.id) >= 10, what="a few steps")
    pool_process = pool_process_running(cluster, job.id)
    assert "worker" in pool_process.parent().cmdline()  # a pool child of a Celery worker, not the worker itself
    os.kill(pool_process.pid, signal.SIGTERM)
    handed_back_and_resumed_without_an_attempt(client, job.id)
