"""The trainer's view of a job, on the main process (worker.training.control.TrainingControl): metrics
events, pause, cancel and preemption, checkpoint publication and the estimated finish."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from contracts.errors import InfrastructureError, LeaseLost
from db import checkpoints, jobs
from db.leased import Lease
from db.states import JobStatus
from storage import layout
from storage.manifest import publish_directory
from worker.context import WorkerContext
from worker.jobs.plan import JobPlan
from worker.jobs.tracking import JobTracking
from worker.outages import ride_out
from worker.training.control import Directive, StepMetrics

log = logging.getLogger(__name__)

#: How often the job's estimated finish is updated.
ESTIMATE_EVERY_SECONDS = 5.0


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
        if metrics.train_reward_mean is not None:
            message += f", reward={metrics.train_reward_mean:.4f}"
        if metrics.valid_reward_mean is not None:
            message += f", validation reward={metrics.valid_reward_mean:.4f}"
        if metrics.valid_loss is not None:
            message += f", validation loss={metrics.valid_loss:.4f}"
        if metrics.full_valid_loss is not None:
            message += f", full validation loss={metrics.full_valid_loss:.4f}"
        def report() -> JobStatus:
            with self.ctx.db.write() as session:
                status = jobs.heartbeat(session, self.lease, ttl=self.ctx.settings.work.lease_ttl_seconds, values=values)
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
            jobs.heartbeat(session, self.lease, ttl=self.ctx.settings.work.lease_ttl_seconds)
            existing = checkpoints.by_step(session, self.lease.work_id, step)
            if existing is None:
                checkpoints.add(session, job_id=self.lease.work_id, project_id=self.lease.project_id, step_number=step,
                                metrics=metrics.as_event_data(),
                                model_name=checkpoints.checkpoint_model_name(self.plan.fine_tuned_model, step),
                                storage_prefix=prefix, manifest_sha256=published.manifest_sha256)
            else:
                # A resumed attempt re-saved this step (the same state): point at the new manifest.
                existing.manifest_sha256 = published.manifest_sha256
            stale = checkpoints.prune(session, self.lease.work_id, keep=self.ctx.settings.training.keep_checkpoints,
                                      pin_best=self.plan.spec.early_stopping is not None)
            if best:
                jobs.add_event(session, self.lease, f"Checkpoint at step {step} has the best full validation loss "
                               f"so far ({metrics.full_valid_loss:.4f})")
        return stale
