"""Test data built through the real repositories (no hand-written rows that could drift from them)."""

from __future__ import annotations

import json
import time
import uuid

from sqlalchemy.orm import Session

from db import files, ids, jobs, projects
from db.states import FileStatus, JobStatus
from db.tables import File, FineTuningJob, Project


def make_project(session: Session, name: str | None = None) -> Project:
    return projects.ensure_project(session, name or f"p-{uuid.uuid4().hex[:8]}")


def make_file(session: Session, project: Project, *, status: str = FileStatus.PROCESSED,
              data_format: str = "chat", examples: int = 20) -> File:
    row = File(id=ids.new_id(ids.FILE), project_id=project.id, filename="train.jsonl", purpose="fine-tune",
               bytes=100, sha256="0" * 64, storage_key="files/x", status=status, data_format=data_format,
               example_count=examples, created_at=int(time.time()), error_count=0)
    files.insert(session, row)
    return row


def make_job(session: Session, project: Project, file: File, *, max_attempts: int = 3,
             to: str = JobStatus.VALIDATING_FILES) -> FineTuningJob:
    """A job, moved along the legal path to `to` (validating_files, queued or running)."""
    job = FineTuningJob(
        id=ids.new_id(ids.JOB), project_id=project.id, base_model="ftaas-tiny", training_file_id=file.id,
        status=JobStatus.VALIDATING_FILES, method={"type": "supervised", "supervised": {"hyperparameters": {}}},
        hyperparameters={"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0}, seed=1,
        model_name_id=ids.short_model_suffix(), result_files=[], created_at=int(time.time()), attempt=0,
        max_attempts=max_attempts, fencing_token=0,
    )
    jobs.insert(session, job, training_file=file.id, validation_file=None)
    if to in (JobStatus.QUEUED, JobStatus.RUNNING):
        assert jobs.mark_validated(session, job, job.hyperparameters)
    if to == JobStatus.RUNNING:
        assert jobs.claim(session, job.id, owner="factory", ttl=60) is not None
    session.flush()
    row = jobs.get_any_project(session, job.id)
    assert row is not None
    return row


def chat_line(question: str, answer: str, **extra: object) -> str:
    return json.dumps({"messages": [{"role": "user", "content": question},
                                    {"role": "assistant", "content": answer, **extra}]})


def training_jsonl(n: int = 12, *, offset: int = 0) -> bytes:
    """A small chat dataset of made-up facts (no third-party text)."""
    rows = [chat_line(f"What is the access code of agent {i}?", f"Agent {i} uses code {(i * 37) % 100}.")
            for i in range(offset, offset + n)]
    return ("\n".join(rows) + "\n").encode()
