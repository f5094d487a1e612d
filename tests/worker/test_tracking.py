"""Experiment tracking with the real `wandb` (offline mode) and `mlflow` (a SQLite store) libraries: a job's
metrics, config and final model land in both; a tracker that fails never fails the job; credentials never
appear in events, logs or the job."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from api.fine_tuning.schemas import JobCreateRequest
from api.fine_tuning.service import JobService
from basemodels.registry import BaseModelRegistry
from tests.worker.test_runner import Bench, make_bench
from tests.worker.test_training_engine import varied_chats
from worker.jobs.preparation import advance_job
from worker.jobs.runner import run_job

SENTINEL_KEY = "wandb-key-SENTINEL-0123456789abcdef0123"


def _create(bench: Bench, training: str, integrations: list[dict]) -> str:
    settings = bench.ctx.settings
    service = JobService(bench.ctx.db, BaseModelRegistry(settings.models.sources()), max_active_jobs=100,
                         max_attempts=3, integrations=settings.tracking.configured_integrations())
    request = JobCreateRequest(model="ftaas-tiny", training_file=training, seed=7, integrations=integrations,
                               method={"type": "supervised", "supervised": {"hyperparameters": {
                                   "n_epochs": 2, "batch_size": 4}}})
    job_id = service.create(bench.principal, request, None).id
    assert advance_job(bench.ctx, job_id) == "queued"
    return job_id


def test_metrics_config_and_the_final_model_reach_wandb_and_mlflow(tmp_path: Path, model_cache_dir: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    bench = make_bench(tmp_path, model_cache_dir, wandb_mode="offline", wandb_dir=tmp_path / "wandb-runs",
                       wandb_api_key=SENTINEL_KEY, mlflow_tracking_uri=store)
    job_id = _create(bench, bench.upload(varied_chats(12)), [
        {"type": "wandb", "wandb": {"project": "migration", "tags": ["ftaas", "ci"]}},
        {"type": "mlflow", "mlflow": {"experiment": "migration", "tags": {"team": "search"}}}])
    with caplog.at_level(logging.DEBUG):
        assert run_job(bench.ctx, job_id) == "succeeded"
    job = bench.job(job_id)
    steps = [m for m in bench.messages(job_id) if m.startswith("Step ")]
    assert len(steps) == 6 and not [m for m in bench.messages(job_id) if "tracking" in m]

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("migration")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["ftaas.job_id"] == job_id
    assert run.data.tags["ftaas.fine_tuned_model"] == job.fine_tuned_model and run.data.tags["team"] == "search"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(1, 7))
    assert run.data.params["training_spec.base_model"] == "ftaas-tiny" and run.data.params["job_id"] == job_id

    [run_file] = list((tmp_path / "wandb-runs" / "wandb").glob("offline-run-*/run-*.wandb"))
    recorded = run_file.read_bytes()
    for expected in (b"train_loss", b"train_mean_token_accuracy", job.fine_tuned_model.encode(), b"migration",
                     b"learning_rate"):
        assert expected in recorded, expected

    # the key is the deployment's: not in events, not in logs, not on the job, not in the run's files
    everywhere = " ".join(bench.messages(job_id)) + caplog.text + str(job.integrations)
    assert SENTINEL_KEY not in everywhere
    assert not [p for p in (tmp_path / "wandb-runs").rglob("*") if p.is_file() and SENTINEL_KEY.encode() in p.read_bytes()]


def test_a_tracker_that_fails_is_a_warning_and_the_job_succeeds(tmp_path: Path, model_cache_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    bench = make_bench(tmp_path, model_cache_dir, mlflow_tracking_uri="http://127.0.0.1:9/")  # discard port
    job_id = _create(bench, bench.upload(varied_chats(12)), [{"type": "mlflow", "mlflow": {}}])
    assert run_job(bench.ctx, job_id) == "succeeded"
    warnings = [m for m in bench.messages(job_id) if "MLflow tracking" in m]
    assert len(warnings) == 1 and "training goes on without it" in warnings[0], warnings
