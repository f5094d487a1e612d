"""Training a claimed job: in the worker's process, or in every process of a data-parallel group.

The runner (worker.jobs.runner) claims the job, reads its plan from the database and downloads its inputs
into a workspace; `execute` then trains. With several processes (settings.training_processes), each one
runs `execute` (see worker.jobs.launch) and only the main process talks to the database and the store.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from contracts.errors import InfrastructureError, LeaseLost, UserError
from contracts.training.spec import TrainingSpec
from db import checkpoints, jobs
from db.leased import Lease
from db.states import JobStatus
from storage import layout
from storage.manifest import publish_directory
from worker.context import WorkerContext
from worker.jobs.tracking import JobTracking
from worker.outages import ride_out
from worker.training.data import encode_lines
from worker.training.distributed import DistributedContext
from worker.training.memory_plan import device_memory_bytes, largest_step_tokens, plan_memory
from worker.training.rehearsal import rehearsal_examples
from worker.training.control import Directive, StepMetrics, TrainingOutcome
from worker.training.kernels import autocast_dtype
from worker.training.trainer import Trainer

log = logging.getLogger(__name__)

ESTIMATE_EVERY_SECONDS = 5.0


@dataclass(frozen=True)
class JobPlan:
    """What the runner read from the database before training (serialisable for other processes)."""

    job_id: str
    project_id: str
    fine_tuned_model: str
    spec: TrainingSpec
    data_format: str
    training_file_id: str
    training_file_sha256: str
    has_validation: bool
    #: Step of the checkpoint to resume from (downloaded into the workspace), if any.
    resume_step: int | None
    #: experiment trackers, as stored on the job (contracts.training.integrations)
    integrations: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["spec"] = self.spec.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobPlan:
        return cls(**{**data, "spec": TrainingSpec.from_json(data["spec"])})


@dataclass(frozen=True)
class Workspace:
    """A job attempt's local directory, shared by every process of the attempt."""

    root: Path

    @property
    def training_data(self) -> Path:
        return self.root / "data" / "training.jsonl"

    @property
    def validation_data(self) -> Path:
        return self.root / "data" / "validation.jsonl"

    @property
    def resume_dir(self) -> Path:
        return self.root / "resume"

    @property
    def trainer_dir(self) -> Path:
        return self.root / "trainer"

    @property
    def preempt_flag(self) -> Path:
        return self.root / "preempt-requested"

    @property
    def outcome_file(self) -> Path:
        return self.root / "outcome.json"


class JobControl:
    """The trainer's view of the job, on the main process: metrics events, pause/cancel/preemption,
    checkpoint publication, estimated finish. Fenced writes that fail (the job was cancelled, reaped or
    re-claimed) turn into STOP, so every process of the job stops together."""

    def __init__(self, ctx: WorkerContext, lease: Lease, plan: JobPlan, *, preempt: Any, lease_alive: Any,
                 tracking: JobTracking | None = None) -> None:
        self.ctx = ctx
        self.tracking = tracking
        self.lease = lease
        self.plan = plan
        self.preempt = preempt
        self.lease_alive = lease_alive
        self.lost = False
        self._started = time.monotonic()
        self._first_step: int | None = None
        self._last_estimate = 0.0

    def after_step(self, metrics: StepMetrics) -> Directive:
        if not self.lease_alive():
            self.lost = True
            return Directive.STOP
        now = time.monotonic()
        if self._first_step is None:
            self._first_step = metrics.step - 1
        values: dict[str, Any] = {}
        if now - self._last_estimate >= ESTIMATE_EVERY_SECONDS or metrics.step == self._first_step + 1:
            per_step = (now - self._started) / max(1, metrics.step - self._first_step)
            values["estimated_finish"] = int(time.time() + per_step * (metrics.total_steps - metrics.step))
            self._last_estimate = now
        message = f"Step {metrics.step}/{metrics.total_steps}: training loss={metrics.train_loss:.4f}"
        if metrics.valid_loss is not None:
            message += f", validation loss={metrics.valid_loss:.4f}"
        if metrics.full_valid_loss is not None:
            message += f", full validation loss={metrics.full_valid_loss:.4f}"
        def report() -> JobStatus:
            with self.ctx.db.write() as session:
                status = jobs.heartbeat(session, self.lease, ttl=self.ctx.settings.lease_ttl_seconds, values=values)
                jobs.add_event(session, self.lease, message, type="metrics", data=metrics.as_event_data())
                return status

        try:
            status = ride_out(report, what=f"report step {metrics.step}", policy=self.ctx.outages,
                              alive=self.lease_alive)
        except LeaseLost:
            self.lost = True
            return Directive.STOP
        if self.tracking is not None:
            self.tracking.log(metrics.step, metrics.as_event_data())
        if status == JobStatus.PAUSING:
            return Directive.PAUSE
        return Directive.PREEMPT if self.preempt() else Directive.CONTINUE

    def on_checkpoint(self, state_dir: Path, metrics: StepMetrics, *, best: bool) -> None:
        step = metrics.step
        prefix = layout.checkpoint_prefix(self.lease.work_id, step)
        provenance = {"kind": "checkpoint", "job_id": self.lease.work_id, "base_model": self.plan.spec.base_model,
                      "step": step, "training_spec": self.plan.spec.to_json(), "metrics": metrics.as_event_data()}
        published = ride_out(lambda: publish_directory(self.ctx.store, prefix, state_dir, provenance),
                             what=f"publish the checkpoint of step {step}", policy=self.ctx.outages,
                             alive=self.lease_alive)
        stale = ride_out(lambda: self._record_checkpoint(step, metrics, prefix, published, best=best),
                         what=f"record the checkpoint of step {step}", policy=self.ctx.outages, alive=self.lease_alive)
        for stale_prefix in stale:
            try:
                self.ctx.store.delete_prefix(stale_prefix)
            except InfrastructureError as exc:  # an old checkpoint left behind costs space, not correctness
                log.warning("could not delete the pruned checkpoint %s: %s", stale_prefix, exc)
        shutil.rmtree(state_dir, ignore_errors=True)

    def _record_checkpoint(self, step: int, metrics: StepMetrics, prefix: str, published: Any, *,
                           best: bool) -> list[str]:
        """The checkpoint's row (and the pruning of old ones) in one transaction; the pruned prefixes."""
        with self.ctx.db.write() as session:
            jobs.heartbeat(session, self.lease, ttl=self.ctx.settings.lease_ttl_seconds)
            existing = checkpoints.by_step(session, self.lease.work_id, step)
            if existing is None:
                checkpoints.add(session, job_id=self.lease.work_id, project_id=self.lease.project_id, step_number=step,
                                metrics=metrics.as_event_data(),
                                model_name=checkpoints.checkpoint_model_name(self.plan.fine_tuned_model, step),
                                storage_prefix=prefix, manifest_sha256=published.manifest_sha256)
            else:
                # A resumed attempt re-saved this step (the same state): point at the new manifest.
                existing.manifest_sha256 = published.manifest_sha256
            stale = checkpoints.prune(session, self.lease.work_id, keep=self.ctx.settings.keep_checkpoints,
                                      pin_best=self.plan.spec.early_stopping is not None)
            if best:
                jobs.add_event(session, self.lease, f"Checkpoint at step {step} has the best full validation loss "
                               f"so far ({metrics.full_valid_loss:.4f})")
        return stale


def log_event(ctx: WorkerContext, lease: Lease, message: str, *, level: str = "info") -> None:
    """A job event under the lease, waiting out a database outage (worker.outages)."""

    def write() -> None:
        with ctx.db.write() as session:
            jobs.heartbeat(session, lease, ttl=ctx.settings.lease_ttl_seconds)
            jobs.add_event(session, lease, message, level=level)

    ride_out(write, what="write a job event", policy=ctx.outages)


def execute(ctx: WorkerContext, lease: Lease, plan: JobPlan, workspace: Workspace, distributed: DistributedContext,
            *, preempt: Any, lease_alive: Any, device: str = "cpu") -> TrainingOutcome:
    """Encode the data, load the model, train. Returns the outcome (on every process)."""

    spec = plan.spec
    tokenizer = ctx.loader.load_tokenizer(spec.base_model)
    train = encode_lines(_lines(workspace.training_data), plan.data_format, tokenizer, spec.max_seq_len)
    valid_examples: list[Any] = []
    warnings = [f"Training file: {w}" for w in train.warnings]
    if plan.has_validation:
        valid = encode_lines(_lines(workspace.validation_data), plan.data_format, tokenizer, spec.max_seq_len)
        valid_examples = valid.examples
        warnings += [f"Validation file: {w}" for w in valid.warnings]
    if distributed.is_main:
        for warning in warnings:
            log_event(ctx, lease, warning, level="warn")
    if not train.examples:
        raise UserError("no training example has any trainable token left after truncation",
                        code="invalid_training_file", param="training_file")
    # The data is known now: the largest step's own tokens, not the worst case validation assumed
    lengths = [len(e.input_ids) if hasattr(e, "input_ids") else len(e.chosen.input_ids) + len(e.rejected.input_ids)
               for e in train.examples]
    plan_of_memory = plan_memory(
        ctx.loader.config(spec.base_model), spec, processes=distributed.world_size,
        device_bytes=device_memory_bytes(device, ctx.settings.training_device_memory_bytes),
        compute_bytes=2 if autocast_dtype(torch_device(device)) is not None else 4,
        tokens_per_step=largest_step_tokens(lengths, spec, distributed.world_size),
        parallelism=ctx.settings.training_parallelism, host_memory=torch_device(device).type == "cpu")
    if plan_of_memory.refusal is not None:
        raise UserError(plan_of_memory.refusal, code="insufficient_device_memory", param="method")
    spec = replace(spec, gradient_checkpointing=plan_of_memory.gradient_checkpointing)
    distributed = replace(distributed, sharded=plan_of_memory.sharded)
    if distributed.is_main:
        log_event(ctx, lease, plan_of_memory.describe())
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
    tracking = None
    if distributed.is_main and plan.integrations:
        tracking = JobTracking.open(ctx.settings, plan.integrations, job_id=plan.job_id, config={
            "job_id": plan.job_id, "base_model": spec.base_model, "training_file": plan.training_file_id,
            "fine_tuned_model": plan.fine_tuned_model, "training_spec": spec.to_json()},
            warn=lambda message: log_event(ctx, lease, message, level="warn"))
    control = JobControl(ctx, lease, plan, preempt=preempt, lease_alive=lease_alive,
                         tracking=tracking) if distributed.is_main else None
    trainer = Trainer(spec, model, tokenizer, train.examples, valid_examples, control, workspace.trainer_dir,
                      distributed=distributed, rehearsal=kept, device=device)
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


#: TrainingOutcome fields that travel from a data-parallel group's main process to the runner as they are.
_OUTCOME_SCALARS = ("stopped_early_at", "best_step", "learned_at_epoch", "learned_accuracy", "final_train_loss",
                    "final_train_accuracy", "final_pass_examples", "train_examples")


def write_outcome(workspace: Workspace, outcome: TrainingOutcome | None, error: dict[str, Any] | None = None) -> None:
    data: dict[str, Any] = {"error": error}
    if outcome is not None:
        data.update(status=outcome.status, step=outcome.step, trained_tokens=outcome.trained_tokens,
                    adapter_dir=str(outcome.adapter_dir) if outcome.adapter_dir else None,
                    **{name: getattr(outcome, name) for name in _OUTCOME_SCALARS})
    workspace.outcome_file.write_text(json.dumps(data))


def read_outcome(workspace: Workspace) -> tuple[TrainingOutcome | None, dict[str, Any] | None]:
    if not workspace.outcome_file.exists():
        return None, None
    data = json.loads(workspace.outcome_file.read_text())
    if data.get("error"):
        return None, data["error"]
    return TrainingOutcome(status=data["status"], step=data["step"], trained_tokens=data["trained_tokens"],
                           adapter_dir=Path(data["adapter_dir"]) if data.get("adapter_dir") else None,
                           **{name: data[name] for name in _OUTCOME_SCALARS if name in data}), None
