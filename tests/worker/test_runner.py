"""The job runner with real collaborators (database, artifact store, tiny model), without Celery:
data-parallel groups, preemption and exact resumption, early stopping, warnings."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load
from sqlalchemy import select

from api.fine_tuning.schemas import JobCreateRequest
from api.fine_tuning.service import JobService
from basemodels.registry import BaseModelRegistry
from contracts.settings import Settings
from db import files, ids, jobs, migrate, models, projects
from db.projects import Principal
from db.states import FileStatus
from db.tables import Checkpoint, File, JobEvent
from tests.factories import chat_line
from tests.worker.test_training_engine import colour_facts, varied_chats
from worker import preemption
from worker.context import WorkerContext
from worker.files.service import validate_file
from worker.jobs.preparation import advance_job
from worker.jobs.runner import run_job


@dataclass
class Bench:
    ctx: WorkerContext
    principal: Principal

    def upload(self, lines: list[str]) -> str:
        data = ("\n".join(lines) + "\n").encode()
        file_id = ids.new_id(ids.FILE)
        stored = self.ctx.store.put_bytes(f"files/{file_id}", data)
        with self.ctx.db.write() as session:
            files.insert(session, File(id=file_id, project_id=self.principal.project_id, filename="d.jsonl",
                                       purpose="fine-tune", bytes=stored.size, sha256=stored.sha256,
                                       storage_key=stored.key, status=FileStatus.UPLOADED,
                                       created_at=int(time.time()), error_count=0))
        assert validate_file(self.ctx, file_id) == "processed"
        return file_id

    def create(self, training: str, validation: str | None = None, **method: Any) -> str:
        service = JobService(self.ctx.db, BaseModelRegistry(self.ctx.settings.models.sources()),
                             max_active_jobs=100, max_attempts=3)
        request = JobCreateRequest(model="ftaas-tiny", training_file=training, validation_file=validation, seed=1234,
                                   method={"type": "supervised", "supervised": method})
        job_id = service.create(self.principal, request, None).id
        assert advance_job(self.ctx, job_id) == "queued"
        return job_id

    def job(self, job_id: str):
        with self.ctx.db.read() as session:
            return jobs.get_any_project(session, job_id)

    def messages(self, job_id: str) -> list[str]:
        with self.ctx.db.read() as session:
            return list(session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))

    def adapter(self, job_id: str) -> dict[str, torch.Tensor]:
        with self.ctx.db.read() as session:
            row = models.get(session, self.principal.project_id, self.job(job_id).fine_tuned_model)
        manifest = json.loads(self.ctx.store.get_bytes(row.storage_prefix + "manifest.json", sha256=row.manifest_sha256))
        entry = manifest["files"]["adapter_model.safetensors"]
        return load(self.ctx.store.get_bytes(row.storage_prefix + "adapter_model.safetensors", sha256=entry["sha256"]))


def make_bench(tmp_path: Path, model_cache_dir: Path, **settings: Any) -> Bench:
    ctx = WorkerContext(Settings(data_dir=tmp_path, model_cache_dir=model_cache_dir, **settings))
    migrate.upgrade(ctx.db)
    with ctx.db.write() as session:
        project = projects.ensure_project(session, "runner")
        principal = Principal(project.id, project.name, "key_test")
    return Bench(ctx, principal)


@pytest.fixture
def bench(tmp_path: Path, model_cache_dir: Path) -> Iterator[Bench]:
    yield make_bench(tmp_path, model_cache_dir)


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_a_job_trains_on_a_group_of_two_processes(tmp_path: Path, model_cache_dir: Path, parallelism: str) -> None:
    group = make_bench(tmp_path, model_cache_dir, training_processes=2, training_parallelism=parallelism)
    training = group.upload(varied_chats(12))
    job_id = group.create(training, hyperparameters={"n_epochs": 2, "batch_size": 4})
    assert run_job(group.ctx, job_id) == "succeeded"
    job = group.job(job_id)
    assert job.status == "succeeded" and job.trained_tokens > 0
    messages = group.messages(job_id)
    steps = [m for m in messages if m.startswith("Step ")]
    assert [int(m.split()[1].split("/")[0]) for m in steps] == list(range(1, 7))  # each step once (main process)
    plan = next(m for m in messages if m.startswith("Estimated peak memory"))
    assert ("FSDP" in plan) == (parallelism == "fsdp")
    assert group.adapter(job_id)


def test_over_long_examples_are_truncated_with_a_warning(bench: Bench) -> None:
    long_line = chat_line("Say a lot.", " ".join(["word"] * 600))
    training = bench.upload([long_line] + varied_chats(10))
    job_id = bench.create(training, hyperparameters={"n_epochs": 1, "batch_size": 4}, max_seq_len=128)
    assert run_job(bench.ctx, job_id) == "succeeded"
    assert any("exceeded 128 tokens and were truncated" in m for m in bench.messages(job_id))


def test_early_stopping_keeps_the_best_checkpoint_and_publishes_it(bench: Bench) -> None:
    training, validation = bench.upload(colour_facts(seed=1)), bench.upload(colour_facts(seed=2))
    job_id = bench.create(training, validation, hyperparameters={"n_epochs": 30, "batch_size": 4,
                                                                  "learning_rate_multiplier": 50},
                          lr_scheduler="constant", n_checkpoints=30, early_stopping={"patience": 2})
    assert run_job(bench.ctx, job_id) == "succeeded"
    messages = bench.messages(job_id)
    stopped = next(m for m in messages if m.startswith("Early stopping at step"))
    best_step = int(stopped.rsplit(" ", 1)[1])
    with bench.ctx.db.read() as session:
        kept = sorted(c.step_number for c in session.scalars(select(Checkpoint).where(
            Checkpoint.job_id == job_id)))
    assert best_step in kept and len(kept) <= bench.ctx.settings.training.keep_checkpoints + 1
    assert f"Checkpoint at step {best_step} has the best full validation loss so far" in " ".join(messages)


def test_a_preempted_job_resumes_to_the_same_adapter_as_an_uninterrupted_one(bench: Bench) -> None:
    training = bench.upload(varied_chats(24))
    options = {"hyperparameters": {"n_epochs": 3, "batch_size": 2}}
    twin, preempted = bench.create(training, **options), bench.create(training, **options)
    assert run_job(bench.ctx, twin) == "succeeded"

    preemption.install_in_pool_process()  # what Celery's worker_process_init does in pool processes

    def stop_after_a_few_steps() -> None:
        while sum(m.startswith("Step ") for m in bench.messages(preempted)) < 7:
            time.sleep(0.02)
        os.kill(os.getpid(), preemption.NOTICE)  # what a stopping worker's main process sends

    threading.Thread(target=stop_after_a_few_steps, daemon=True).start()
    try:
        assert run_job(bench.ctx, preempted) == "preempted"
    finally:
        signal.signal(preemption.NOTICE, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    job = bench.job(preempted)
    assert (job.status, job.attempt, job.lease_owner) == ("queued", 0, None)
    requeued = next(m for m in bench.messages(preempted) if m.startswith("Job re-queued: the worker is shutting down"))
    step = int(requeued.split("checkpoint saved at step ")[1].split(",")[0])
    assert 7 <= step < 36

    assert run_job(bench.ctx, preempted) == "succeeded"  # "another worker"
    messages = bench.messages(preempted)
    assert f"Resuming from the checkpoint at step {step}" in messages
    assert "Fine-tuning job resumed (attempt 1)" in messages and bench.job(preempted).attempt == 1
    expected, actual = bench.adapter(twin), bench.adapter(preempted)
    assert all(torch.allclose(expected[k], actual[k], atol=1e-6) for k in expected)
    with bench.ctx.db.read() as session:
        rows = {j: [e.data for e in session.scalars(select(JobEvent).where(JobEvent.job_id == j, JobEvent.type == "metrics")
                                                    .order_by(JobEvent.id))] for j in (twin, preempted)}
    def learned(row: dict) -> dict:  # what the step learned and reported, less its wall time
        return {k: v for k, v in row.items() if k != "step_seconds"}

    by_step = {row["step"]: learned(row) for row in rows[preempted]}  # a re-run step keeps its latest report
    assert [by_step[s] for s in sorted(by_step)] == [learned(row) for row in rows[twin]]
    assert all(row["step_seconds"] > 0 for row in rows[twin])


def test_validation_metrics_come_every_eval_interval_and_in_full_at_checkpoints(bench: Bench) -> None:
    training, validation = bench.upload(varied_chats(12)), bench.upload(varied_chats(10, seed=9))
    job_id = bench.create(training, validation, hyperparameters={"n_epochs": 2, "batch_size": 4}, eval_interval=2)
    assert run_job(bench.ctx, job_id) == "succeeded"
    with bench.ctx.db.read() as session:
        rows = [e.data for e in session.scalars(select(JobEvent).where(JobEvent.job_id == job_id,
                                                                        JobEvent.type == "metrics").order_by(JobEvent.id))]
    assert [r["step"] for r in rows] == list(range(1, 7))  # one metrics event per step
    assert [r["step"] for r in rows if "valid_loss" in r] == [2, 3, 4, 6]  # every 2 steps, and at checkpoints
    assert [r["step"] for r in rows if "full_valid_loss" in r] == [3, 6]  # one checkpoint per epoch
    assert all("train_loss" in r and "train_mean_token_accuracy" in r for r in rows)
    job = bench.job(job_id)
    with bench.ctx.db.read() as session:
        results = files.get(session, bench.principal.project_id, job.result_files[0])
    table = bench.ctx.store.get_bytes(results.storage_key, sha256=results.sha256).decode().splitlines()
    assert table[0].split(",") == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy",
                                   "full_valid_loss", "full_valid_mean_token_accuracy", "full_train_loss",
                                   "full_train_mean_token_accuracy"]
    assert len(table) == 1 + 6  # every step once
    third = table[3].split(",")
    assert third[0] == "3" and all(third[1:7]) and third[7:] == ["", ""]  # step 3 has every validation column
    assert table[1].split(",")[3:] == ["", "", "", "", "", ""]  # step 1 has no validation columns
    last = table[6].split(",")
    assert last[0] == "6" and all(last[1:])  # the last step also has the final pass over the training data
    with bench.ctx.db.read() as session:
        final = next(e for e in session.scalars(select(JobEvent).where(JobEvent.job_id == job_id))
                     if e.message.startswith("Final training token accuracy"))
        assert final.type == "message" and final.data["step"] == 6
        assert float(last[8]) == final.data["full_train_mean_token_accuracy"]
