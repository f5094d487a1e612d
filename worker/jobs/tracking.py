"""Experiment tracking: a job's metrics, config and final model, sent to the trackers it asked for.

One `JobTracking` per job attempt, on the main training process. Each tracker opens (or re-opens, after a
pause or a move to another worker) the run named by the job id, logs every step's metrics, and on success
records the fine-tuned model's name and its storage reference. The libraries are the trackers' own (`wandb`,
`mlflow`): their run formats, retries and offline modes are theirs.

Tracking never decides the job's fate: a tracker that fails (not installed, unreachable, refused) is
reported once as a job warning, with the error's type and the tracker's own message, and then left alone;
training goes on. Credentials come from settings only: the W&B key is handed to wandb's settings (not the
environment, not the run config) and appears in no event or log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contracts.settings import Settings
from contracts.training.integrations import MlflowIntegration, WandbIntegration, parse_integrations

log = logging.getLogger(__name__)


class Tracker:
    """One tracker's run for the job."""

    kind = ""

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def finish(self, *, succeeded: bool, model: str | None, reference: dict[str, Any] | None) -> None: ...

    def suspend(self) -> None:
        """The attempt ends before the job does (paused, preempted): close without marking the run done."""


class WandbTracker(Tracker):
    kind = "W&B"

    def __init__(self, options: WandbIntegration, settings: Settings, *, job_id: str, config: dict[str, Any]) -> None:
        import wandb

        wandb_settings: dict[str, Any] = {"mode": settings.tracking.wandb_mode, "silent": True, "x_disable_stats": True}
        if settings.tracking.wandb_api_key is not None:
            wandb_settings["api_key"] = settings.tracking.wandb_api_key.get_secret_value()
        if settings.tracking.wandb_base_url:
            wandb_settings["base_url"] = settings.tracking.wandb_base_url
        directory = settings.tracking.wandb_dir or settings.data_dir / "wandb"
        Path(directory).mkdir(parents=True, exist_ok=True)
        o = options.wandb
        self.run = wandb.init(project=o.project, entity=o.entity, name=o.name or job_id, tags=o.tags, id=_run_id(job_id),
                              resume="allow", config=config, dir=str(directory), reinit="create_new",
                              settings=wandb.Settings(**wandb_settings))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def finish(self, *, succeeded: bool, model: str | None, reference: dict[str, Any] | None) -> None:
        if model is not None:
            self.run.summary["fine_tuned_model"] = model
            self.run.summary["adapter"] = reference
        self.run.finish(exit_code=0 if succeeded else 1)

    def suspend(self) -> None:
        self.run.finish(exit_code=0)


class MlflowTracker(Tracker):
    kind = "MLflow"

    def __init__(self, options: MlflowIntegration, settings: Settings, *, job_id: str, config: dict[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        assert settings.tracking.mlflow_tracking_uri is not None
        self.client = MlflowClient(tracking_uri=settings.tracking.mlflow_tracking_uri)
        o = options.mlflow
        experiment = self.client.get_experiment_by_name(o.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(o.experiment)
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`ftaas.job_id` = '{job_id}'",
                                        max_results=1)
        if found:  # a later attempt of the same job continues its run
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(experiment_id, run_name=o.run_name or job_id,
                                         tags={"ftaas.job_id": job_id, **(o.tags or {})})
            self.run_id = run.info.run_id
            from mlflow.entities import Param

            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in _flatten(config).items()])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def finish(self, *, succeeded: bool, model: str | None, reference: dict[str, Any] | None) -> None:
        if model is not None:
            self.client.set_tag(self.run_id, "ftaas.fine_tuned_model", model)
            for key, value in (reference or {}).items():
                self.client.set_tag(self.run_id, f"ftaas.adapter.{key}", str(value))
        self.client.set_terminated(self.run_id, status="FINISHED" if succeeded else "FAILED")

    def suspend(self) -> None:
        self.client.set_terminated(self.run_id, status="KILLED")


class JobTracking:
    """The job's trackers; every call is safe (a failing tracker is reported once through `warn`, dropped)."""

    def __init__(self, trackers: list[Tracker], warn: Callable[[str], None], secrets: tuple[str, ...] = ()) -> None:
        self.trackers = trackers
        self.warn = warn
        self.secrets = secrets

    @classmethod
    def open(cls, settings: Settings, integrations: list[dict[str, Any]] | None, *, job_id: str,
             config: dict[str, Any], warn: Callable[[str], None]) -> JobTracking:
        trackers: list[Tracker] = []
        secrets = tuple(s.get_secret_value() for s in (settings.tracking.wandb_api_key,) if s is not None)
        for integration in parse_integrations(integrations):
            kind = "W&B" if isinstance(integration, WandbIntegration) else "MLflow"
            try:
                if isinstance(integration, WandbIntegration):
                    trackers.append(WandbTracker(integration, settings, job_id=job_id, config=config))
                else:
                    trackers.append(MlflowTracker(integration, settings, job_id=job_id, config=config))
            except Exception as exc:
                cls._report(warn, kind, "could not start", exc, secrets)
        return cls(trackers, warn, secrets)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and k != "step"}
        self._each(lambda tracker: tracker.log(step, numbers), "could not log metrics")

    def finish(self, *, succeeded: bool, model: str | None = None, reference: dict[str, Any] | None = None) -> None:
        self._each(lambda tracker: tracker.finish(succeeded=succeeded, model=model, reference=reference),
                   "could not record the result")
        self.trackers = []

    def suspend(self) -> None:
        self._each(lambda tracker: tracker.suspend(), "could not close the run")
        self.trackers = []

    def _each(self, call: Callable[[Tracker], None], what: str) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:
                self.trackers.remove(tracker)
                self._report(self.warn, tracker.kind, what, exc, self.secrets)

    @staticmethod
    def _report(warn: Callable[[str], None], kind: str, what: str, exc: Exception, secrets: tuple[str, ...]) -> None:
        detail = str(exc)[:300]
        for secret in secrets:  # a tracker's error may quote the key it was given
            detail = detail.replace(secret, "[redacted]")
        log.warning("%s tracking %s: %s", kind, what, type(exc).__name__)
        warn(f"{kind} tracking {what} ({type(exc).__name__}: {detail}); training goes on without it")


def _run_id(job_id: str) -> str:
    """W&B run ids allow letters, digits, '-' and '_' (job ids are `ftjob-<base32>`)."""
    return job_id.replace("ftjob-", "ftjob_").lower()


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
