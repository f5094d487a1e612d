"""Validate an uploaded training file, record the outcome, and wake the jobs waiting for it."""

from __future__ import annotations

import logging

from contracts.errors import IntegrityFailure
from contracts.files.validation import ValidationOutcome
from db import files, jobs, outbox
from db.states import FileStatus
from worker.context import WorkerContext
from worker.files.validation import validate_jsonl

log = logging.getLogger(__name__)


def validate_file(ctx: WorkerContext, file_id: str) -> str:
    """Idempotent: a file already decided (or deleted) is left alone. Returns what happened."""
    with ctx.db.read() as session:
        file = files.get_any_project(session, file_id)
        if file is None or file.status != FileStatus.UPLOADED:
            return "skipped"
        key, sha256, size = file.storage_key, file.sha256, file.bytes
    try:
        outcome = validate_jsonl(ctx.store.iter_verified(key, sha256=sha256, size=size), ctx.validation_limits)
    except IntegrityFailure as exc:
        log.error("file %s failed its integrity check: %s", file_id, exc)
        outcome = ValidationOutcome(ok=False, data_format=None, example_count=0, error_count=1,
                                    errors=[{"line": None, "code": exc.code, "message": str(exc)}],
                                    summary=f"The stored file is corrupt: {exc}")
    with ctx.db.write() as session:
        if not files.record_validation(session, file_id, outcome):
            return "skipped"
        for job_id in jobs.jobs_waiting_for_file(session, file_id):
            outbox.add(session, outbox.ADVANCE_JOB, job_id)
    return "processed" if outcome.ok else "error"
