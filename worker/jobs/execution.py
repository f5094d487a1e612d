"""Training a claimed job: in the worker's process, or in every process of a data-parallel group.

The runner (worker.jobs.runner) claims the job, reads its plan (worker.jobs.plan) and downloads its inputs
into a workspace (worker.jobs.workspace); `execute` then trains: encode the data, check the step's memory
against the device, load the model, train under the job's control (worker.jobs.control). With several
processes (settings.training.processes), each one runs `execute` (see worker.jobs.launch) and only the
main process talks to the database and the store.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from contracts.errors import InvalidRequest, UserError
from contracts.graders import Grader
from contracts.training.spec import TrainingSpec
from db.leased import Lease
from graders.deployment import grading_context
from graders.grading import GradingContext, check
from worker.context import WorkerContext
from worker.jobs.control import JobControl
from worker.jobs.events import log_event
from worker.jobs.plan import JobPlan
from worker.jobs.tracking import JobTracking
from worker.jobs.workspace import Workspace
from worker.training.control import TrainingOutcome
from worker.training.data import encode_lines
from worker.training.distributed import DistributedContext
from worker.training.kernels import autocast_dtype, measured_precision
from worker.training.memory_plan import device_memory_bytes, largest_step_tokens, plan_memory
from worker.training.rehearsal import rehearsal_examples
from worker.training.reinforcement import BaseModelEndpoint
from worker.training.trainer import Trainer


def execute(ctx: WorkerContext, lease: Lease, plan: JobPlan, workspace: Workspace, distributed: DistributedContext,
            *, preempt: Any, lease_alive: Any, device: str = "cpu") -> TrainingOutcome:
    """Encode the data, load the model, train. Returns the outcome (on every process)."""
    spec = plan.spec
    tokenizer = ctx.loader.load_tokenizer(spec.base_model)
    train, valid = _encode(ctx, lease, plan, workspace, tokenizer, announce=distributed.is_main)
    precision = training_precision(ctx, spec, torch_device(device), distributed)
    spec, distributed = _fit_memory(ctx, lease, spec, distributed, train, device, precision)
    # Under FSDP the whole model need not fit the device: it is loaded on the CPU, and each process moves only
    # its shards to the device.
    model = ctx.loader.load_model(spec.base_model, device="cpu" if distributed.fsdp else device,
                                  quantization=spec.adapter.quantization)
    kept: list[Any] = []
    if spec.rehearsal:
        kept = rehearsal_examples(model, tokenizer, spec.max_seq_len)
        if distributed.is_main:
            log_event(ctx, lease, f"Rehearsal: every step also holds the model to the base model's own answers to "
                                  f"{len(kept)} general prompts, so it keeps what it knew (method.supervised.rehearsal)")
    tracking = _open_tracking(ctx, lease, plan, spec) if distributed.is_main else None
    control = JobControl(ctx, lease, plan, preempt=preempt, lease_alive=lease_alive,
                         tracking=tracking) if distributed.is_main else None
    grading = reinforcement_grading(ctx, spec) if spec.method == "reinforcement" else None
    # One CPU process shares the machine with serving (contracts.machine); a process group splits it already.
    governor = ctx.settings.resources.governor("batch") if device == "cpu" and distributed.world_size == 1 else None
    trainer = Trainer(spec, model, tokenizer, train, valid, control, workspace.trainer_dir,
                      distributed=distributed, rehearsal=kept, device=device, grading=grading, governor=governor,
                      precision=precision)
    if trainer.reinforcement is not None and grading is not None and grading.endpoint is None:
        grading.endpoint = BaseModelEndpoint(trainer.reinforcement.sampler, tokenizer, spec.base_model)
    resume = workspace.resume_dir if plan.resume_step is not None else None
    if resume is not None and distributed.is_main:
        log_event(ctx, lease, f"Resuming from the checkpoint at step {plan.resume_step}")
    try:
        outcome = trainer.run(resume)
    except BaseException:
        if tracking is not None:
            tracking.finish(succeeded=False)
        raise
    if control is not None and control.lost:
        outcome.status = "lease-lost"
    if tracking is not None:
        _close_tracking(tracking, plan, outcome)
    return outcome


def reinforcement_grading(ctx: WorkerContext, spec: TrainingSpec) -> GradingContext:
    """The grader's context on this worker: checked again here (the sandbox must work on this machine), with
    the configured model endpoint; without one, model graders are answered by the job's own base model
    through the trainer's sampler (set once the trainer exists)."""
    context = grading_context(ctx.settings.graders)
    grader = TypeAdapter(Grader).validate_python(spec.grader)
    try:
        check(grader, context, param="method.reinforcement.grader", require_endpoint=False)
    except InvalidRequest as exc:
        raise UserError(exc.message, code=exc.code, param=exc.param) from None
    return context


def _encode(ctx: WorkerContext, lease: Lease, plan: JobPlan, workspace: Workspace, tokenizer: Any, *,
            announce: bool) -> tuple[list[Any], list[Any]]:
    """The training and validation examples; what encoding dropped or cut becomes `warn` events (`announce`:
    this process writes them). A file with nothing left to train on fails the job."""
    spec = plan.spec
    train = encode_lines(_lines(workspace.training_data), plan.data_format, tokenizer, spec.max_seq_len)
    valid_examples: list[Any] = []
    warnings = [f"Training file: {w}" for w in train.warnings]
    if plan.has_validation:
        valid = encode_lines(_lines(workspace.validation_data), plan.data_format, tokenizer, spec.max_seq_len)
        valid_examples = valid.examples
        warnings += [f"Validation file: {w}" for w in valid.warnings]
    if announce:
        for warning in warnings:
            log_event(ctx, lease, warning, level="warn")
    if not train.examples:
        raise UserError("no training example has any trainable token left after truncation",
                        code="invalid_training_file", param="training_file")
    return train.examples, valid_examples


def training_precision(ctx: WorkerContext, spec: TrainingSpec, device: Any, distributed: DistributedContext) -> str:
    """"bf16" (autocast) or "fp32". On a CPU, one process: whichever measured faster for this model's shapes
    on this machine (worker.training.kernels.measured_precision); a GPU or a process group (whose processes must
    agree without talking): bf16 where the hardware computes it natively."""
    if distributed.world_size == 1:
        return measured_precision(ctx.loader, spec.base_model, device, ctx.settings.resources.governor("batch"))
    return "bf16" if autocast_dtype(device) is not None else "fp32"


def _fit_memory(ctx: WorkerContext, lease: Lease, spec: TrainingSpec, distributed: DistributedContext,
                examples: list[Any], device: str, precision: str) -> tuple[TrainingSpec, DistributedContext]:
    """The spec and process group as the memory plan decides them, now that the data's own largest step is
    known (validation assumed the smallest one); a job that cannot fit fails with the estimate."""
    lengths = [len(e.input_ids) if hasattr(e, "input_ids") else
               len(e.prompt_ids) + spec.max_completion_tokens if hasattr(e, "prompt_ids") else
               len(e.chosen.input_ids) + len(e.rejected.input_ids) for e in examples]
    on = torch_device(device)
    plan = plan_memory(
        ctx.loader.config(spec.base_model), spec, processes=distributed.world_size,
        device_bytes=device_memory_bytes(device, ctx.settings.training.device_memory_bytes),
        compute_bytes=2 if precision == "bf16" else 4,
        tokens_per_step=largest_step_tokens(lengths, spec, distributed.world_size),
        parallelism=ctx.settings.training.parallelism, host_memory=on.type == "cpu")
    if plan.refusal is not None:
        raise UserError(plan.refusal, code="insufficient_device_memory", param="method")
    if distributed.is_main:
        log_event(ctx, lease, plan.describe())
    return (replace(spec, gradient_checkpointing=plan.gradient_checkpointing),
            replace(distributed, sharded=plan.sharded))


def _open_tracking(ctx: WorkerContext, lease: Lease, plan: JobPlan, spec: TrainingSpec) -> JobTracking | None:
    """The job's experiment trackers (W&B, MLflow), where it asked for any; their failures are warnings."""
    if not plan.integrations:
        return None
    return JobTracking.open(ctx.settings, plan.integrations, job_id=plan.job_id, config={
        "job_id": plan.job_id, "base_model": spec.base_model, "training_file": plan.training_file_id,
        "fine_tuned_model": plan.fine_tuned_model, "training_spec": spec.to_json()},
        warn=lambda message: log_event(ctx, lease, message, level="warn"))


def _close_tracking(tracking: JobTracking, plan: JobPlan, outcome: TrainingOutcome) -> None:
    """A completed run names the model the job publishes (and the step it comes from); a paused or preempted
    one is closed to be continued by the next attempt; a cancelled one ends unsuccessful."""
    if outcome.status == "completed":
        tracking.finish(succeeded=True, model=plan.fine_tuned_model, reference={
            "model": plan.fine_tuned_model, "base_model": plan.spec.base_model,
            "step": outcome.best_step if outcome.best_step is not None else outcome.step,
            "trained_tokens": outcome.trained_tokens})
    elif outcome.status in ("paused", "preempted"):
        tracking.suspend()
    else:
        tracking.finish(succeeded=False)


def torch_device(name: str) -> Any:
    import torch

    return torch.device(name)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8-sig").splitlines()
