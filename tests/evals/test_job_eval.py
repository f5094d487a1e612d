"""An eval attached to a fine-tuning job, run by the job runner itself (real database, store and tiny
model, no Celery): the job keeps its model whatever happens to its eval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from api.fine_tuning.schemas import JobCreateRequest
from api.fine_tuning.service import JobService
from api.knowledge_evals.service import KnowledgeEvalService
from basemodels.registry import BaseModelRegistry
from db import knowledge_evals, models
from tests.worker.test_runner import make_bench
from tests.worker.test_training_engine import varied_chats
from worker.jobs.preparation import advance_job
from worker.jobs.runner import run_job


def create_job(bench: Any, training: str, knowledge_eval: dict[str, Any], *, external_judge: bool) -> str:
    registry = BaseModelRegistry(bench.ctx.settings.models.sources())
    evals = KnowledgeEvalService(bench.ctx.db, bench.ctx.store, registry, max_attempts=3,
                                 external_judge=external_judge)
    service = JobService(bench.ctx.db, registry, max_active_jobs=10, max_attempts=3, knowledge_evals=evals)
    request = JobCreateRequest(model="ftaas-tiny", training_file=training, seed=5, knowledge_eval=knowledge_eval,
                               method={"type": "supervised", "supervised": {
                                   "hyperparameters": {"n_epochs": 1, "batch_size": 4}}})
    job_id = service.create(bench.principal, request, None).id
    assert advance_job(bench.ctx, job_id) == "queued"
    return job_id


def test_a_job_whose_judge_is_down_still_succeeds_and_says_why_its_eval_failed(tmp_path: Path,
                                                                              model_cache_dir: Path) -> None:
    bench = make_bench(tmp_path, model_cache_dir, eval_judge_base_url="http://127.0.0.1:9/v1")
    training = bench.upload(varied_chats(12))
    job_id = create_job(bench, training, {"suites": ["api_renames?size=1"], "judge_model": "ftaas-tiny",
                                          "max_new_tokens": 4}, external_judge=True)
    assert run_job(bench.ctx, job_id) == "succeeded"
    job = bench.job(job_id)
    assert job.status == "succeeded" and len(job.result_files) == 1  # the metrics file only
    with bench.ctx.db.read() as session:
        assert models.get(session, bench.principal.project_id, job.fine_tuned_model) is not None
        evaluation = knowledge_evals.for_job(session, job_id)
    assert evaluation.status == "failed" and evaluation.error["code"] == "judge_unavailable"
    assert any(m.startswith(f"Knowledge eval {evaluation.id} failed:") for m in bench.messages(job_id))


def test_a_job_with_an_eval_publishes_the_report_with_its_results(tmp_path: Path, model_cache_dir: Path) -> None:
    bench = make_bench(tmp_path, model_cache_dir)
    training = bench.upload(varied_chats(12))
    job_id = create_job(bench, training, {"suites": ["dated_events?size=2", "control?size=4"],
                                          "max_new_tokens": 4}, external_judge=False)
    assert run_job(bench.ctx, job_id) == "succeeded"
    job = bench.job(job_id)
    assert len(job.result_files) == 6  # metrics, report, spec, items, chart, loss curve
    with bench.ctx.db.read() as session:
        evaluation = knowledge_evals.for_job(session, job_id)
    assert evaluation.status == "succeeded" and evaluation.model == job.fine_tuned_model
    assert evaluation.progress_done == evaluation.progress_total == 2 * (6 + 4)
    messages = bench.messages(job_id)
    headline = [m for m in messages if m.startswith("Knowledge eval memorization")]
    assert len(headline) == 1 and messages.index(headline[0]) < messages.index("The job has successfully completed")


def test_a_job_with_a_comparison_reports_how_alike_its_model_answers_in_events_and_result_files(
        tmp_path: Path, model_cache_dir: Path) -> None:
    """A comparison attached to the job: the fine-tuned model against recorded answers (here the training
    file's own, so the figure is how often the copy writes what it was taught)."""
    bench = make_bench(tmp_path, model_cache_dir)
    training = bench.upload(varied_chats(12))
    job_id = create_job(bench, training, {"comparison": {"reference_file": training, "max_new_tokens": 8}},
                        external_judge=False)
    assert bench.job(job_id).knowledge_eval["spec"]["kind"] == "comparison"
    assert run_job(bench.ctx, job_id) == "succeeded"
    job = bench.job(job_id)
    assert len(job.result_files) == 6  # metrics, report, spec, items, comparison chart, loss curve
    with bench.ctx.db.read() as session:
        evaluation = knowledge_evals.for_job(session, job_id)
    assert evaluation.status == "succeeded" and evaluation.progress_done == evaluation.progress_total == 12
    figures = evaluation.summary["comparison"]
    assert figures["items"] == 12 and figures["models"]["candidate"] == job.fine_tuned_model
    messages = bench.messages(job_id)
    [headline] = [m for m in messages if m.startswith("Comparison of ")]
    assert f"on 12 held-out prompts: exact agreement {figures['agreement']['rate']:.3f}" in headline
    assert messages.index(headline) < messages.index("The job has successfully completed")
