"""Validate an uploaded training file, count its tokens, record the outcome, and wake the jobs waiting for it."""

from __future__ import annotations

import logging
from typing import Any

from jinja2 import TemplateError

from contracts.errors import IntegrityFailure, UserError
from contracts.files.validation import ValidationOutcome
from db import files, jobs, outbox
from db.states import FileStatus
from worker.context import WorkerContext
from worker.files.validation import iter_lines, validate_jsonl
from worker.training.data import TokenCount

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
    token_counts = _token_counts(ctx, key, sha256, size, outcome) if outcome.ok else None
    with ctx.db.write() as session:
        if not files.record_validation(session, file_id, outcome, token_counts=token_counts):
            return "skipped"
        for job_id in jobs.jobs_waiting_for_file(session, file_id):
            outbox.add(session, outbox.ADVANCE_JOB, job_id)
    return "processed" if outcome.ok else "error"


def _token_counts(ctx: WorkerContext, key: str, sha256: str, size: int,
                  outcome: ValidationOutcome) -> dict[str, Any]:
    """base model -> the file's token counts under that model's tokenizer and chat template
    (worker.training.data.TokenCount), for every base model of the installation, in one more pass over the
    file; a model whose tokenizer cannot be loaded here, or whose template refuses the file, gets
    {"error": why} instead."""
    assert outcome.data_format is not None  # a valid file has a format
    counts: dict[str, Any] = {}
    counters: dict[str, TokenCount] = {}
    for base_model in ctx.registry.names():
        try:
            counters[base_model] = TokenCount(outcome.data_format, ctx.tokenizer(base_model))
        except (OSError, ValueError) as exc:  # tokenizer files missing or unreadable here
            log.warning("token counts of %s under %s: %s", key, base_model, exc)
            counts[base_model] = {"error": f"the tokenizer of {base_model} could not be loaded here"}
        except UserError as exc:
            counts[base_model] = {"error": exc.public_message}
    for _, raw in iter_lines(ctx.store.iter_verified(key, sha256=sha256, size=size),
                             ctx.validation_limits.max_line_bytes):
        line = (raw or b"").decode("utf-8")
        for base_model, counter in list(counters.items()):
            try:
                counter.add(line)
            except UserError as exc:  # e.g. a chat template whose renderings are not prefixes of each other
                counts[base_model] = {"error": exc.public_message}
                del counters[base_model]
            except TemplateError as exc:  # the template refuses a conversation (e.g. roles that do not alternate)
                counts[base_model] = {"error": f"the chat template of {base_model} refused a line: {exc}"}
                del counters[base_model]
    counts.update({base_model: counter.result() for base_model, counter in counters.items()})
    return {base_model: counts[base_model] for base_model in ctx.registry.names()}
