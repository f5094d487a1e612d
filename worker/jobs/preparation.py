"""validating_files -> queued: check the job's files once they are validated and resolve "auto"."""

from __future__ import annotations

import logging
from dataclasses import replace

from contracts.files.formats import FORMATS_FOR_METHOD
from contracts.training.spec import Method, ReinforcementMethod, TrainingSpec, resolve_hyperparameters
from db import files, jobs
from db.states import FileStatus, JobStatus
from graders.grading import first_line_missing
from worker.context import WorkerContext
from worker.jobs.group import training_device
from worker.training.memory_plan import device_memory_bytes, plan_memory

log = logging.getLogger(__name__)


def advance_job(ctx: WorkerContext, job_id: str) -> str:
    """Idempotent. Waits (returns "waiting") while a file is still being validated; the file's
    validation task wakes the job again when it finishes."""
    with ctx.db.write() as session:
        job = jobs.get_any_project(session, job_id)
        if job is None or job.status != JobStatus.VALIDATING_FILES:
            return "skipped"
        checked = []
        for param, file_id in (("training_file", job.training_file_id), ("validation_file", job.validation_file_id)):
            if file_id is None:
                continue
            file = files.get(session, job.project_id, file_id, include_expired=True)
            if file is None:
                jobs.fail_validation(session, job, jobs.error_object(
                    "file_not_found", f"The {param.replace('_', ' ')} {file_id} was deleted.", param))
                return "failed"
            if file.status == FileStatus.UPLOADED:
                return "waiting"
            if file.status == FileStatus.ERROR:
                jobs.fail_validation(session, job, jobs.error_object(
                    f"invalid_{param}", f"The {param.replace('_', ' ')} {file_id} is invalid: {file.status_details}",
                    param))
                return "failed"
            checked.append((param, file))
        method = Method.model_validate(job.method)
        for param, file in checked:
            if file.data_format not in FORMATS_FOR_METHOD[method.type]:
                jobs.fail_validation(session, job, jobs.error_object(
                    f"invalid_{param}",
                    f"The {param.replace('_', ' ')} {file.id} is in the {file.data_format} format, which "
                    f"{method.type} fine-tuning cannot use (it needs {' or '.join(FORMATS_FOR_METHOD[method.type])}).",
                    param))
                return "failed"
            missing = (first_line_missing(method.section.grader, file.item_fields or {})
                       if isinstance(method.section, ReinforcementMethod) else None)
            if missing is not None:
                name, line = missing
                jobs.fail_validation(session, job, jobs.error_object(
                    f"invalid_{param}", f"The {param.replace('_', ' ')} {file.id}, line {line}, has no field {name!r}, "
                    f"which the grader reads as {{{{item.{name}}}}}: every line needs it.", param))
                return "failed"
        training = checked[0][1]
        resolved = resolve_hyperparameters(method, training.example_count or 0)
        job.method = method.to_json(resolved, data_format=training.data_format)
        refusal = _memory_refusal(ctx, job.base_model, job.method, resolved)
        if refusal is not None:
            jobs.fail_validation(session, job, jobs.error_object("insufficient_device_memory", refusal, "method"))
            return "failed"
        jobs.mark_validated(session, job, resolved)
    return "queued"


def _memory_refusal(ctx: WorkerContext, base_model: str, method: dict, hyperparameters: dict) -> str | None:
    """Why the job cannot fit the training device even with its shortest possible steps (its checkpointing as
    asked, auto: on), or None: the weights, the adapter and its optimizer state must fit. The examples'
    lengths are not known here (nothing is tokenised), so steps are counted at one token per example; the
    worker checks the real largest step before it loads the model. From the config alone: no weights load."""
    spec = TrainingSpec.for_job(base_model=base_model, method=method, hyperparameters=hyperparameters, seed=0)
    if spec.gradient_checkpointing is None:
        spec = replace(spec, gradient_checkpointing=True)  # the smallest auto may choose
    try:
        config = ctx.loader.config(base_model)
    except Exception as exc:  # not readable here (a hub model not cached yet): the worker checks before training
        log.info("memory check of %s skipped at validation: %s", base_model, exc)
        return None
    processes = max(1, ctx.settings.training.processes)
    device = training_device()
    plan = plan_memory(config, spec, processes=processes, tokens_per_step=max(1, -(-spec.batch_size // processes)),
                       device_bytes=device_memory_bytes(device, ctx.settings.training.device_memory_bytes),
                       parallelism=ctx.settings.training.parallelism, host_memory=device == "cpu")
    return plan.refusal
