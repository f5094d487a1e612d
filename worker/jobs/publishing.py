"""The end of a successful job: what it says about learning its data, and publishing its model (the adapter
artifact, the results file, the attached knowledge eval, the model row and `succeeded`, in that order;
objects are removed again when the job cannot complete)."""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable
from typing import Any

from contracts.errors import InfrastructureError, LeaseLost
from db import events, files, ids, jobs, models
from db.leased import Lease
from db.states import FileStatus
from db.tables import File
from storage import layout
from storage.manifest import publish_directory
from worker.context import WorkerContext
from worker.jobs.events import log_event
from worker.jobs.plan import JobPlan
from worker.jobs.results import metrics_csv
from worker.outages import ride_out
from worker.training.control import TrainingOutcome
from worker.training.learning import final_pass_message, learned_message, low_accuracy_warning

log = logging.getLogger(__name__)


def report_learning(ctx: WorkerContext, lease: Lease, plan: JobPlan, outcome: TrainingOutcome) -> None:
    """Events saying whether the run learned its data (worker.training.learning). The final pass is a message
    event carrying its figures as data (metrics events stay one per step); the results file shows the same
    figures in the last step's full_train_* columns (`publish_model`)."""
    if outcome.learned_at_epoch is not None and outcome.learned_accuracy is not None:
        log_event(ctx, lease, learned_message(outcome.learned_at_epoch, plan.spec.n_epochs, outcome.learned_accuracy))
    if outcome.final_train_accuracy is None or outcome.final_train_loss is None:
        return
    message = final_pass_message(accuracy=outcome.final_train_accuracy, loss=outcome.final_train_loss,
                                 examples=outcome.final_pass_examples, total_examples=outcome.train_examples)
    with ctx.db.write() as session:
        jobs.heartbeat(session, lease, ttl=ctx.settings.work.lease_ttl_seconds)
        jobs.add_event(session, lease, message, data={"step": outcome.step, **final_pass_columns(outcome)})
    warning = low_accuracy_warning(plan.spec, outcome.final_train_accuracy, outcome.train_examples)
    if warning is not None:
        log_event(ctx, lease, warning, level="warn")


def final_pass_columns(outcome: TrainingOutcome) -> dict[str, float]:
    if outcome.final_train_accuracy is None or outcome.final_train_loss is None:
        return {}
    return {"full_train_loss": round(outcome.final_train_loss, 6),
            "full_train_mean_token_accuracy": round(outcome.final_train_accuracy, 6)}


def publish_model(ctx: WorkerContext, lease: Lease, plan: JobPlan, outcome: TrainingOutcome, *,
                  alive: Callable[[], bool] = lambda: True) -> None:
    """The adapter artifact, the attached knowledge eval, the results file, then in one transaction the model
    row, the result files and `succeeded`. Each step waits out a store or database outage (worker.outages): a
    finished training is published once the dependency is back, never trained again. Objects stored under this
    attempt's own keys are removed again when the job cannot complete."""
    from serving.service import AdapterRef
    from worker.knowledge_evals.service import run_for_job

    assert outcome.adapter_dir is not None
    uid = ids.new_id(ids.MODEL_UID)
    prefix = layout.model_prefix(uid)
    adapter_dir = outcome.adapter_dir
    published = ride_out(lambda: publish_directory(ctx.store, prefix, adapter_dir, _provenance(plan, outcome)),
                         what="publish the adapter", policy=ctx.outages, alive=alive)
    results_key = layout.results_key(plan.job_id, uid)
    evaluation = None
    try:
        evaluation = ride_out(lambda: run_for_job(
            ctx, lease, model_name=plan.fine_tuned_model, base_model=plan.spec.base_model,
            adapter_ref=AdapterRef(prefix, published.manifest_sha256, plan.fine_tuned_model),
            tuned_info={"adapter_uri": prefix, "method": plan.spec.adapter.type,
                        "hyperparameters": plan.spec.to_json(), "epochs_completed": plan.spec.n_epochs}),
            what="run the attached knowledge eval", policy=ctx.outages, alive=alive)
        stored = ride_out(lambda: _store_results(ctx, plan, outcome, results_key), what="store the results file",
                          policy=ctx.outages, alive=alive)
        chart = None
        if plan.spec.method == "reinforcement":
            chart_stored = ride_out(lambda: _store_reward_chart(ctx, plan, chart_key(results_key)),
                                    what="store the reward chart", policy=ctx.outages, alive=alive)
            chart = (ids.new_id(ids.FILE), chart_key(results_key), chart_stored)
    except BaseException:
        # Nothing points at these objects yet (all under keys of this attempt's own): remove them.
        _remove_unpublished(ctx, prefix, results_key, evaluation)
        raise
    results_id = ids.new_id(ids.FILE)  # one id whatever the retries of the completion
    try:
        ride_out(lambda: _complete(ctx, lease, plan, outcome, uid, prefix, published.manifest_sha256,
                                   (results_id, results_key, stored), evaluation, chart),
                 what="complete the job", policy=ctx.outages, alive=alive)
    except LeaseLost:
        # Cancelled (or re-claimed) during publication: nothing points at these objects, so remove them now.
        _remove_unpublished(ctx, prefix, results_key, evaluation)
        raise


def _provenance(plan: JobPlan, outcome: TrainingOutcome) -> dict[str, Any]:
    """What the published adapter's manifest records about where it came from."""
    import peft
    import torch
    import transformers

    from worker.training.adapters import servable_summary

    assert outcome.adapter_dir is not None
    return {
        "kind": "adapter",
        "model": plan.fine_tuned_model,
        "job_id": plan.job_id,
        "base_model": plan.spec.base_model,
        "adapter": servable_summary(outcome.adapter_dir),
        "training_spec": plan.spec.to_json(),
        "training_file": {"id": plan.training_file_id, "sha256": plan.training_file_sha256},
        "best_step": outcome.best_step,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "python": platform.python_version()},
    }


def _store_results(ctx: WorkerContext, plan: JobPlan, outcome: TrainingOutcome, key: str) -> Any:
    """The results file: the job's metrics per step, the final pass's figures on the last row."""
    with ctx.db.read() as session:
        rows = events.metrics_rows(session, plan.job_id)
    if rows:
        rows[-1] = {**rows[-1], **final_pass_columns(outcome)}
    return ctx.store.put_bytes(key, metrics_csv(rows))


def chart_key(results_key: str) -> str:
    """Where a reinforcement job's reward chart goes: beside its results file."""
    return results_key.rsplit("/", 1)[0] + "/reward.png"


def _store_reward_chart(ctx: WorkerContext, plan: JobPlan, key: str) -> Any:
    """The reward chart of a reinforcement job: its training and validation reward per step."""
    from evals.charts import reward_curve_png

    with ctx.db.read() as session:
        rows = events.metrics_rows(session, plan.job_id)
    return ctx.store.put_bytes(key, reward_curve_png(rows, title=f"Reward: {plan.fine_tuned_model}"))


def _complete(ctx: WorkerContext, lease: Lease, plan: JobPlan, outcome: TrainingOutcome, uid: str, prefix: str,
              manifest_sha256: str, results: tuple[str, str, Any], evaluation: Any,
              chart: tuple[str, str, Any] | None = None) -> None:
    """One transaction: the results file (id, key, stored object), the reward chart of a reinforcement job,
    the model row, the eval's files and ending, and `succeeded` (a fenced write: a job cancelled meanwhile
    raises LeaseLost and nothing is written)."""
    from worker.knowledge_evals.service import finish_for_job

    results_id, results_key, stored = results
    with ctx.db.write() as session:
        files.insert(session, File(
            id=results_id, project_id=plan.project_id, filename="step_metrics.csv", purpose="fine-tune-results",
            bytes=stored.size, sha256=stored.sha256, storage_key=results_key, status=FileStatus.PROCESSED,
            created_at=int(time.time()), error_count=0))
        models.add(session, name=plan.fine_tuned_model, uid=uid, project_id=plan.project_id, job_id=plan.job_id,
                   base_model=plan.spec.base_model, storage_prefix=prefix, manifest_sha256=manifest_sha256)
        result_files = [results_id]
        if chart is not None:
            chart_id, key, chart_stored = chart
            files.insert(session, File(
                id=chart_id, project_id=plan.project_id, filename="reward_curve.png", purpose="fine-tune-results",
                bytes=chart_stored.size, sha256=chart_stored.sha256, storage_key=key, status=FileStatus.PROCESSED,
                created_at=int(time.time()), error_count=0))
            result_files.append(chart_id)
        if evaluation is not None:
            jobs.heartbeat(session, lease, ttl=ctx.settings.work.lease_ttl_seconds)
            result_files += finish_for_job(session, lease, evaluation)
        jobs.complete(session, lease, fine_tuned_model=plan.fine_tuned_model, trained_tokens=outcome.trained_tokens,
                      result_files=result_files)


def _remove_unpublished(ctx: WorkerContext, prefix: str, results_key: str, evaluation: Any) -> None:
    """Best effort: objects nothing points at cost space, not correctness (a store outage can leave them)."""
    keys = [results_key, chart_key(results_key)] + (
        [row.storage_key for row in evaluation.file_rows] if evaluation is not None else [])
    try:
        ctx.store.delete_prefix(prefix)
        for key in keys:
            ctx.store.delete(key)
    except InfrastructureError as exc:
        log.warning("could not remove the unpublished objects under %s: %s", prefix, exc)
