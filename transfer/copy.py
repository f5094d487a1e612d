"""Copying a source's fine-tuning jobs to an ftaas target: their files (downloaded, uploaded, the content
hash checked on the target's copy, validated by the target) and the jobs themselves (translated by
`transfer.plan`).

Idempotent and resumable: the state directory records every file and job made; without it, a file already
on the target (same name, same size, same content hash) is reused, and jobs are created with an
Idempotency-Key derived from the source job, so the target answers a repeated creation with the job it made
the first time. A source file the target rejects is reported with the source's id and the target's
line-numbered errors, and the other jobs go on.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import openai

from transfer.plan import JobPlan, estimate_tokens
from transfer.state import TransferState

#: Progress callback: (what, bytes or items done, total or None)
Progress = Callable[[str, int, int | None], None]


class TransferError(Exception):
    """A transfer step that cannot go on (the message says which object and why)."""


@dataclass
class CopyOutcome:
    source_job: str
    #: created | existing | skipped | failed
    result: str
    target_job: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


def download(source: Any, file_id: str, state: TransferState, progress: Progress | None = None) -> tuple[str, str]:
    """(sha256, filename) of a source file, downloaded once into the state directory."""
    known = state.section("files").get(file_id)
    if known and state.file_path(known["sha256"]).exists():
        return known["sha256"], known["filename"]
    meta = source.files.retrieve(file_id)
    chunks: list[bytes] = []
    with source.files.with_streaming_response.content(file_id) as response:
        done = 0
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            done += len(chunk)
            if progress is not None:
                progress(f"download {file_id}", done, meta.bytes)
    content = b"".join(chunks)
    if meta.bytes is not None and len(content) != meta.bytes:
        raise TransferError(f"source file {file_id}: downloaded {len(content)} bytes, the source says {meta.bytes}")
    digest = state.keep_bytes(content)
    state.section("files")[file_id] = {"sha256": digest, "filename": meta.filename, "bytes": len(content)}
    state.save()
    return digest, meta.filename


def upload(target: Any, source_file: str, state: TransferState, *, poll_seconds: float = 0.5,
           timeout_seconds: float = 600) -> str:
    """The target's id of a downloaded source file: uploaded (or found already there), its content hash checked
    on the target's copy, and validated by the target (TransferError with its line-numbered errors)."""
    record = state.section("files")[source_file]
    content = state.file_path(record["sha256"]).read_bytes()
    target_id = record.get("target_id")
    if target_id is None:
        target_id = _already_there(target, record)
    if target_id is None:
        created = target.files.create(file=(record["filename"], content), purpose="fine-tune")
        target_id = created.id
    if hashlib.sha256(target.files.content(target_id).content).hexdigest() != record["sha256"]:
        raise TransferError(f"source file {source_file}: the target's copy {target_id} differs from the download "
                            "(content hash mismatch)")
    record["target_id"] = target_id
    state.save()
    deadline = time.monotonic() + timeout_seconds
    while (status := target.files.retrieve(target_id)).status == "uploaded":
        if time.monotonic() > deadline:
            raise TransferError(f"source file {source_file}: the target did not validate {target_id} in "
                                f"{timeout_seconds:.0f} s")
        time.sleep(poll_seconds)
    if status.status == "error":
        raise TransferError(f"source file {source_file} (uploaded as {target_id}) failed the target's validation: "
                            f"{status.status_details}")
    return target_id


def _already_there(target: Any, record: dict[str, Any]) -> str | None:
    """A fine-tune file on the target with the same name, size and content (a re-run without its state); one
    the target rejected is found too, so that its errors are reported again instead of a second copy made."""
    for candidate in target.files.list(purpose="fine-tune"):
        if candidate.filename == record["filename"] and candidate.bytes == record["bytes"] and \
                hashlib.sha256(target.files.content(candidate.id).content).hexdigest() == record["sha256"]:
            return str(candidate.id)
    return None


def copy_job(source: Any, target: Any, plan: JobPlan, state: TransferState,
             progress: Progress | None = None) -> CopyOutcome:
    """Copy one planned job (its files, then the job). Never raises for the job's own problems: they are in
    the outcome, so the caller goes on with the next job."""
    outcome = CopyOutcome(source_job=plan.source_job, result="skipped")
    if plan.create is None:
        outcome.messages = list(plan.problems)
        return outcome
    made = state.section("jobs").get(plan.source_job)
    if made:
        outcome.result, outcome.target_job = "existing", made["target_job"]
        return outcome
    body = dict(plan.create)
    try:
        for role in ("training_file", "validation_file"):
            if body.get(role):
                download(source, body[role], state, progress)
                outcome.files[body[role]] = body[role] = upload(target, body[role], state)
    except TransferError as exc:
        outcome.result = "failed"
        outcome.messages.append(str(exc))
        return outcome
    try:
        job = target.fine_tuning.jobs.create(**body, extra_headers={"Idempotency-Key": f"transfer-{plan.source_job}"})
    except openai.APIStatusError as exc:  # the target refused this job (a 4xx): report it, go on with the rest
        if exc.status_code >= 500:
            raise
        outcome.result = "failed"
        outcome.messages.append(f"the target refused the job: HTTP {exc.status_code}: {exc.message}")
        return outcome
    outcome.result, outcome.target_job = "created", job.id
    state.section("jobs")[plan.source_job] = {"target_job": job.id, "training_file": body["training_file"]}
    state.save()
    return outcome


def estimate(source: Any, plan: JobPlan, state: TransferState, progress: Progress | None = None) -> int:
    """Download the plan's training file (kept for the copy) and estimate the tokens the job trains."""
    digest, _ = download(source, plan.training_file, state, progress)
    epochs = None
    if plan.create is not None:
        value = plan.create["method"][plan.method]["hyperparameters"].get("n_epochs")
        epochs = value if isinstance(value, int) else None
    plan.estimated_tokens = estimate_tokens(state.file_path(digest).read_bytes(), epochs)
    return plan.estimated_tokens
