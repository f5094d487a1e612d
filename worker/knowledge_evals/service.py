"""Knowledge evals in a worker: standalone evals (their own task and lease) and evals attached to a job.

Both paths share `evaluate()`: resolve the spec's sources in the eval's project, generate through an
in-process `InferenceService` (the serving engine), score (the LLM judge is an external OpenAI-compatible
endpoint when `FTAAS_EVAL_JUDGE_BASE_URL` is set, else ftaas's own engine), then store report.json,
items.jsonl, the spec that was run and the charts under `evals/{id}/` as result files. Rows point at objects only after the
objects are stored.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from contracts.errors import DependencyOutage, FTaaSError, InvalidRequest, LeaseLost
from db import events, files, ids, jobs, knowledge_evals, models
from db.leased import Lease
from db.projects import Principal
from db.states import FileStatus
from db.tables import File, KnowledgeEval
from evals import charts
from evals.artifacts import CHART, COMPARISON_CHART, ITEMS, LOSS_CURVE, REPORT, SPEC
from evals.comparison import REPORT_OBJECT, is_comparison
from evals.comparison import headline as comparison_headline
from evals.comparison import summary_lines as comparison_lines
from evals.report import summary_rows
from evals.run import EvalRun
from evals.sources import load_items, project_resolver
from evals.spec import validate_report, validate_spec
from storage import layout
from worker.context import WorkerContext
from worker.knowledge_evals.comparison import generations, held_out_items, run_comparison
from worker.knowledge_evals.engine import EngineGenerator, EngineJudge
from worker.outages import OWN_DEPENDENCIES, Patiently, patiently
from worker.standalone import StandaloneWork

log = logging.getLogger(__name__)

RESULT_PURPOSE = "knowledge-eval-results"
PROGRESS_EVERY_SECONDS = 2.0


@dataclass
class EvalArtifacts:
    report: dict[str, Any]
    summary: dict[str, Any]
    file_rows: list[File]


def headline_summary(report: dict[str, Any]) -> dict[str, Any]:
    summary = report["summary"]
    if report.get("object") == REPORT_OBJECT:
        return {"comparison": {"models": report["models"], **summary}}
    out = {kind: {k: summary[kind].get(k) for k in ("mean_base", "mean_tuned", "mean_delta")}
           for kind in ("memorization", "generalization")}
    if "forgetting" in summary:
        out["forgetting"] = summary["forgetting"]
    if "by_setting" in summary:
        out["by_setting"] = summary["by_setting"]
    return out


def headline_messages(report: dict[str, Any]) -> list[str]:
    """The job events that carry an eval's headline numbers."""

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    summary = report["summary"]
    if report.get("object") == REPORT_OBJECT:
        return [(f"Comparison of {report['models']['candidate']} with {report['models']['reference']} on "
                 f"{summary['items']} held-out prompts: {comparison_headline(summary)}")]
    lines = []
    for kind in ("memorization", "generalization"):
        head = summary[kind]
        lines.append(f"Knowledge eval {kind}: base {fmt(head.get('mean_base'))} -> tuned {fmt(head.get('mean_tuned'))} "
                     f"(delta {fmt(head.get('mean_delta'))})")
    if "forgetting" in summary:
        lines.append(f"Knowledge eval forgetting (control items the base model knew): delta "
                     f"{fmt(summary['forgetting']['mean_control_delta'])}")
    return lines


def evaluate(ctx: WorkerContext, *, eval_id: str, project_id: str, spec_document: dict[str, Any], model: str,
             base_model: str, overrides: dict[str, Any] | None = None, tuned_info: dict[str, Any] | None = None,
             loss_rows: list[dict[str, Any]] | None = None, progress: Callable[[int, int], None] | None = None,
             patient: Patiently | None = None) -> EvalArtifacts:
    """Run the eval and store its artifacts (no database rows written except through `progress`). Reading
    the sources and storing the artifacts wait out store and database outages (`patient`; by default
    with the worker's outage policy)."""
    from serving.service import InferenceService

    patient = patient or patiently(ctx.outages)
    read = files.content_reader(ctx.db, ctx.store, project_id, include_expired=True)
    spec: Any = None
    held_out: list[Any] = []
    if is_comparison(spec_document):
        content = patient(lambda: read(spec_document["reference_file"]), "read the reference file")
        if content is None:
            raise InvalidRequest(f"The reference file {spec_document['reference_file']} no longer exists.",
                                 code="file_not_found", param="comparison.reference_file")
        held_out = held_out_items(spec_document, content)
    else:
        spec = validate_spec(spec_document)
        items, controls = patient(lambda: load_items(spec, project_resolver(read)), "read the eval's sources")
    # An adapter disk cache of this process's own: under `ftaas up` the API's serving engine uses the
    # shared one, and two processes must not evict each other's files.
    # Batch-invariant: an eval's answers do not depend on how its generations were batched (reproducible).
    # float32 whatever the hardware: bfloat16 greedy answers part from float32's at near-ties (measured on
    # SmolLM2: 4 of 8 prompts within 48 tokens; docs/evals.md), so an eval would score differently on a machine with AMX than
    # on one without, and differently from the transformers reference path that unservable families use.
    # Full weights likewise, whatever serving_weights says: int8 weights change greedy answers too.
    settings = ctx.settings.serving.model_copy(update={
        "cache_dir": ctx.work_dir / f"eval-serving-{os.getpid()}", "batch_invariant": True, "dtype": "float32",
        "weights": "full"})
    # An eval is batch work: it yields cores to serving on a shared machine (contracts.machine).
    inference = InferenceService(ctx.db, ctx.store, ctx.registry, ctx.loader, settings,
                                 governor=ctx.settings.resources.governor("batch"))
    judge: Any = None
    try:
        principal = Principal(project_id=project_id, project_name="", api_key_id="")
        generator = EngineGenerator(inference, principal)
        for name, resolved in (overrides or {}).items():
            generator.override(name, resolved)
        if ctx.settings.evals.judge_base_url:
            from evals.judge import JudgeClient

            key = ctx.settings.evals.judge_api_key
            judge = JudgeClient(ctx.settings.evals.judge_base_url, key.get_secret_value() if key else "none")
        else:
            judge = EngineJudge(generator)
        counter = _Counter(progress)
        if spec is None:
            counter.total = generations(spec_document, held_out)
            counter.report(force=True)
            report, lines = run_comparison(generator, judge, spec_document, held_out, eval_id=eval_id, model=model,
                                           progress=counter.add)
        else:
            run = EvalRun(spec, items, controls, generator, base_model=base_model, tuned_model=model, judge=judge,
                          run_id=eval_id, tuned_model_info=tuned_info or {}, evaluate_base=model != base_model,
                          progress=counter.add)
            counter.total = run.total_generations
            counter.report(force=True)
            report, lines = run.execute()
        counter.report(force=True)
    finally:
        inference.close()
        if hasattr(judge, "close"):
            judge.close()
    rows = _store_results(ctx, eval_id, project_id, spec_document if spec is None else spec.document, report,
                          lines, loss_rows, patient)
    table = (comparison_lines(report["summary"]) if spec is None
             else [" | ".join(r) for r in summary_rows(report)])
    log.info("knowledge eval %s done:\n%s", eval_id, "\n".join(table))
    return EvalArtifacts(report, headline_summary(report), rows)


def _store_results(ctx: WorkerContext, eval_id: str, project_id: str, spec_document: dict[str, Any],
                   report: dict[str, Any],
                   lines: list[dict[str, Any]], loss_rows: list[dict[str, Any]] | None, patient: Patiently) -> list[File]:
    """The run's result files (evals.artifacts) stored under a prefix of the run's own, and their rows (not
    yet inserted: the caller writes them with the eval's ending)."""
    prefix = layout.eval_prefix(eval_id, uuid.uuid4().hex[:16])
    report["artifacts"] = {"per_item_uri": f"{prefix}{ITEMS}"}
    comparison = report.get("object") == REPORT_OBJECT
    if not comparison:
        validate_report(report)
    outputs: list[tuple[str, bytes]] = [
        (REPORT, json.dumps(report, indent=2).encode()),
        (SPEC, json.dumps(spec_document, indent=2).encode()),
        (ITEMS, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()),
        (COMPARISON_CHART, charts.comparison_png(report)) if comparison else (CHART, charts.base_vs_tuned_png(report)),
    ]
    if loss_rows is not None:
        outputs.append((LOSS_CURVE, charts.loss_curve_png(loss_rows)))
    rows = []
    for filename, data in outputs:
        stored = patient(functools.partial(ctx.store.put_bytes, prefix + filename, data), f"store {filename}")
        rows.append(File(id=ids.new_id(ids.FILE), project_id=project_id, filename=f"{eval_id}-{filename}",
                         purpose=RESULT_PURPOSE, bytes=stored.size, sha256=stored.sha256, storage_key=prefix + filename,
                         status=FileStatus.PROCESSED, created_at=int(time.time()), error_count=0))
    return rows


class _Counter:
    """Counts finished generations and reports them at most every PROGRESS_EVERY_SECONDS."""

    def __init__(self, sink: Callable[[int, int], None] | None) -> None:
        self.sink = sink
        self.done = 0
        self.total = 0
        self._last = 0.0

    def add(self, count: int) -> None:
        self.done += count
        self.report()

    def report(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.sink is not None and (force or now - self._last >= PROGRESS_EVERY_SECONDS):
            self._last = now
            self.sink(self.done, self.total)


# ---------------------------------------------------------------------------------------- standalone
def run_standalone(ctx: WorkerContext, eval_id: str) -> str:
    """The task body: claim, evaluate, complete. Returns not-claimed, succeeded, failed, requeued, lease-lost."""
    ttl = ctx.settings.work.lease_ttl_seconds
    claimed = StandaloneWork.claim(
        ctx.db, knowledge_evals.QUEUE, eval_id, owner=ctx.owner, ttl=ttl, values={"progress_done": 0},
        read=lambda session, row: (row.spec, row.model, row.base_model, _loss_rows_for_model(session, row)))
    if claimed is None:
        return "not-claimed"
    work, (spec_document, model, base_model, loss_rows) = claimed
    lease = work.lease
    renewal = work.renewal()
    # Store and database outages cost the eval time, not an attempt (worker.outages).
    patient = patiently(ctx.outages, alive=lambda: not renewal.lost.is_set())

    def progress(done: int, total: int) -> None:
        # A progress write that finds the eval cancelled or re-claimed stops the run at once.
        renewal.check()

        def write() -> None:
            with ctx.db.write() as session:
                knowledge_evals.heartbeat(session, lease, ttl=ttl, progress_done=done, progress_total=total)

        patient(write, "report the eval's progress")

    def complete(artifacts: EvalArtifacts) -> None:
        with ctx.db.write() as session:
            for file_row in artifacts.file_rows:
                files.insert(session, file_row)
            knowledge_evals.complete(session, lease, summary=artifacts.summary,
                                     result_files=[f.id for f in artifacts.file_rows])

    try:
        with renewal:
            # An outage the steps inside do not wait out (loading the models from the store) runs the eval
            # again once the dependency is back; past the deadline it fails with `dependency_outage`. An
            # external judge's errors are not waited out: they spend attempts (docs/reliability.md).
            artifacts = patient(lambda: evaluate(
                ctx, eval_id=eval_id, project_id=lease.project_id, spec_document=spec_document, model=model,
                base_model=base_model, loss_rows=loss_rows, progress=progress, patient=patient), "run the eval")
        patient(lambda: complete(artifacts), "complete the eval")
        return "succeeded"
    except Exception as exc:  # noqa: BLE001 - every outcome, bugs included, is settled by the taxonomy
        return work.settle(exc, internal_code="eval_error")


def _loss_rows_for_model(session: Any, row: KnowledgeEval) -> list[dict[str, Any]] | None:
    """The training metrics of the job that made the evaluated model, when there is one."""
    model = models.get(session, row.project_id, row.model)
    if model is not None and model.job_id:
        return events.metrics_rows(session, model.job_id)
    return None


# --------------------------------------------------------------------------------------- job-attached
def _attach(ctx: WorkerContext, lease: Lease, *, model_name: str, base_model: str
            ) -> tuple[str, dict[str, Any], list[dict[str, Any]]] | None:
    """The job's eval row, made running (a new one, or the one an earlier attempt left): (its id, its spec, the
    job's training metrics); None when the job has no eval."""
    with ctx.db.write() as session:
        job = jobs.get_any_project(session, lease.work_id)
        assert job is not None
        if not job.knowledge_eval:
            return None
        row = knowledge_evals.for_job(session, job.id)
        if row is not None:
            knowledge_evals.restart_attached(session, row.id, model=model_name)
        else:
            row = KnowledgeEval(id=ids.new_id(ids.KNOWLEDGE_EVAL), project_id=job.project_id, model=model_name,
                                base_model=base_model, job_id=job.id, status="running",
                                spec=job.knowledge_eval["spec"], spec_name=job.knowledge_eval["spec"]["name"],
                                spec_sha256=job.knowledge_eval["spec_sha256"], result_files=[],
                                created_at=int(time.time()), started_at=int(time.time()), attempt=1,
                                max_attempts=1, fencing_token=0)
            knowledge_evals.insert(session, row, dispatch=False)
        jobs.heartbeat(session, lease, ttl=ctx.settings.work.lease_ttl_seconds)
        jobs.add_event(session, lease, f"Running knowledge eval {row.id} ({row.spec_name}) on the fine-tuned model")
        return row.id, row.spec, events.metrics_rows(session, job.id)


def run_for_job(ctx: WorkerContext, lease: Lease, *, model_name: str, base_model: str, adapter_ref: Any,
                tuned_info: dict[str, Any]) -> EvalArtifacts | None:
    """Evaluate a job's just-published adapter before the job completes, under the job's lease.

    Returns None when the job has no eval. A user error in the eval (a source that cannot be read, say)
    does not fail the job: the eval is marked failed and the job says so in a warning event.
    """
    from serving.service import ResolvedModel

    attached = _attach(ctx, lease, model_name=model_name, base_model=base_model)
    if attached is None:
        return None
    eval_id, spec_document, loss_rows = attached

    def progress(done: int, total: int) -> None:
        def write() -> None:
            with ctx.db.write() as session:
                jobs.heartbeat(session, lease, ttl=ctx.settings.work.lease_ttl_seconds)
                knowledge_evals.record_progress(session, eval_id, done=done, total=total)

        patiently(ctx.outages)(write, "report the eval's progress")

    info = {**tuned_info, "training_job_id": lease.work_id}
    losses = [row["train_loss"] for row in loss_rows if isinstance(row.get("train_loss"), int | float)]
    if losses:
        info["final_train_loss"] = losses[-1]
    try:
        artifacts = evaluate(ctx, eval_id=eval_id, project_id=lease.project_id, spec_document=spec_document,
                             model=model_name, base_model=base_model,
                             overrides={model_name: ResolvedModel(model_name, base_model, adapter_ref)},
                             tuned_info=info, loss_rows=loss_rows, progress=progress)
    except (LeaseLost, DependencyOutage, *OWN_DEPENDENCIES):
        raise  # our own dependencies: the job's publish waits them out (and runs the eval again) or fails
    except Exception as exc:
        # The fine-tune itself succeeded: whatever went wrong with its eval (a judge that is down, a bug),
        # the job keeps its model and says what happened; retraining would not help.
        if not isinstance(exc, FTaaSError):
            log.exception("knowledge eval %s of job %s failed", eval_id, lease.work_id)
        error = ({"code": exc.code, "message": exc.message, "param": exc.param} if isinstance(exc, FTaaSError)
                 else {"code": "eval_error", "message": f"{type(exc).__name__}: {exc}", "param": None})
        with ctx.db.write() as session:
            knowledge_evals.fail_attached(session, eval_id, error)
            jobs.heartbeat(session, lease, ttl=ctx.settings.work.lease_ttl_seconds)
            jobs.add_event(session, lease, f"Knowledge eval {eval_id} failed: {error['message']}", level="warn")
        return None
    return artifacts


def finish_for_job(session: Any, lease: Lease, artifacts: EvalArtifacts) -> list[str]:
    """In the job's final transaction: the eval's files and row, and the headline events. Returns file ids."""
    row = knowledge_evals.for_job(session, lease.work_id)
    assert row is not None
    for file_row in artifacts.file_rows:
        files.insert(session, file_row)
    ids_ = [f.id for f in artifacts.file_rows]
    knowledge_evals.complete_attached(session, row.id, summary=artifacts.summary, result_files=ids_)
    for message in headline_messages(artifacts.report):
        jobs.add_event(session, lease, message, type="message",
                       data={"knowledge_eval_id": row.id, "summary": artifacts.summary})
    return ids_
