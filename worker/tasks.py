"""Celery tasks: thin wrappers that take ids, build nothing themselves, and call one service function.

Each task is idempotent: it re-reads the database and does nothing when the work is done or owned by
someone else. Infrastructure errors in the short tasks are retried with backoff; user errors never are.
"""

from __future__ import annotations

import os

from celery import Celery

from contracts.errors import InfrastructureError
from contracts.settings import Settings
from db.outbox import (
    ADVANCE_JOB,
    HOLD_TRAINING_MODEL,
    RUN_ADAPTER_OPERATION,
    RUN_EVAL,
    RUN_JOB,
    VALIDATE_FILE,
)
from worker.context import WorkerContext

_contexts: dict[int, WorkerContext] = {}


def _context(settings: Settings) -> WorkerContext:
    """One context per process: prefork children build their own after the fork."""
    pid = os.getpid()
    if pid not in _contexts:
        _contexts[pid] = WorkerContext(settings)
    return _contexts[pid]


def register_tasks(app: Celery, settings: Settings) -> None:
    retry = {"autoretry_for": (InfrastructureError,), "retry_backoff": True, "retry_backoff_max": 60,
             "max_retries": 10}

    @app.task(name=VALIDATE_FILE.name, **retry)
    def validate_file(file_id: str) -> str:
        from worker.files.service import validate_file as run

        return run(_context(settings), file_id)

    @app.task(name=ADVANCE_JOB.name, **retry)
    def advance_job(job_id: str) -> str:
        from worker.jobs.preparation import advance_job as run

        return run(_context(settings), job_id)

    @app.task(name=RUN_JOB.name)
    def run_fine_tuning_job(job_id: str) -> str:
        from worker.jobs.runner import run_job

        return run_job(_context(settings), job_id)

    @app.task(name=RUN_EVAL.name)
    def run_knowledge_eval(eval_id: str) -> str:
        from worker.knowledge_evals.service import run_standalone

        return run_standalone(_context(settings), eval_id)

    @app.task(name=RUN_ADAPTER_OPERATION.name)
    def run_adapter_operation(operation_id: str) -> str:
        from worker.adapter_operations.service import run_operation

        return run_operation(_context(settings), operation_id)

    @app.task(name=HOLD_TRAINING_MODEL.name)
    def hold_training_model(model_id: str) -> str:
        from worker.training_api.holder import hold_model

        return hold_model(_context(settings), model_id)
