"""Wire shapes of the fine-tuning jobs API (OpenAI's fine-tuning jobs API; docs/architecture.md, "Wire contract").

Every field the SDK reads is always present, with null where it has no value yet.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.knowledge_evals.schemas import KnowledgeEvalOptions
from contracts.metadata import check_metadata
from contracts.training.integrations import Integration
from contracts.training.spec import Method, SupervisedHyperparameters
from db.tables import Checkpoint, FineTuningJob, JobEvent

SUFFIX = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_suffix(value: str | None) -> str | None:
    """A model-name suffix: 1-64 letters, digits, '_', '.' or '-' (it becomes part of `ft:...` names)."""
    if value is not None and not SUFFIX.match(value):
        raise ValueError("must be 1-64 characters of letters, digits, '_', '.' or '-'")
    return value


class JobCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(default=None, max_length=64)
    hyperparameters: SupervisedHyperparameters | None = Field(
        default=None, description="Deprecated by OpenAI in favour of method.<type>.hyperparameters; still accepted.")
    method: Method | None = None
    suffix: str | None = Field(default=None, description="1-64 characters: letters, digits, '_', '.', '-'.")
    seed: int | None = Field(default=None, ge=0, le=2_147_483_647)
    metadata: dict[str, str] | None = None
    integrations: list[Integration] | None = Field(
        default=None, max_length=4, description="Experiment trackers (wandb, mlflow) that receive the job's metrics, "
                                                "config and final model; credentials come from the deployment.")
    knowledge_eval: KnowledgeEvalOptions | None = Field(
        default=None, description="ftaas extension: evaluate the fine-tuned model (base vs tuned) before the job "
                                  "completes; the report becomes a result file and its headline numbers job events.")

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: str | None) -> str | None:
        return check_suffix(value)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_metadata(value)

    @field_validator("integrations")
    @classmethod
    def _integrations(cls, value: list[Any] | None) -> list[Any] | None:
        kinds = [integration.type for integration in value or []]
        if len(set(kinds)) != len(kinds):
            raise ValueError("at most one integration of each type")
        return value


class JobError(BaseModel):
    code: str | None
    message: str | None
    param: str | None


class Hyperparameters(BaseModel):
    n_epochs: int | str | None
    batch_size: int | str | None
    learning_rate_multiplier: float | str | None


class FineTuningJobObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    model: str
    organization_id: str
    status: str
    training_file: str
    validation_file: str | None
    hyperparameters: Hyperparameters
    method: dict[str, Any] | None
    result_files: list[str]
    fine_tuned_model: str | None
    finished_at: int | None
    trained_tokens: int | None
    estimated_finish: int | None
    seed: int
    error: JobError | None
    integrations: list[dict[str, Any]] | None
    metadata: dict[str, str] | None
    user_provided_suffix: str | None
    #: ftaas extension: the knowledge eval requested with the job (its spec name and version), or null.
    knowledge_eval: dict[str, Any] | None = None

    @classmethod
    def of(cls, row: FineTuningJob) -> FineTuningJobObject:
        hp = row.hyperparameters
        return cls(
            id=row.id, created_at=row.created_at, model=row.base_model, organization_id=row.project_id,
            status=row.status, training_file=row.training_file_id, validation_file=row.validation_file_id,
            hyperparameters=Hyperparameters(n_epochs=hp.get("n_epochs"), batch_size=hp.get("batch_size"),
                                            learning_rate_multiplier=hp.get("learning_rate_multiplier")),
            method=row.method, result_files=list(row.result_files or []), fine_tuned_model=row.fine_tuned_model,
            finished_at=row.finished_at, trained_tokens=row.trained_tokens,
            estimated_finish=row.estimated_finish if row.status in ("running", "pausing") else None,
            seed=row.seed, error=JobError(**row.error) if row.error else None,
            integrations=list(row.integrations or []),
            metadata=row.user_metadata, user_provided_suffix=row.suffix,
            knowledge_eval=({"spec_name": row.knowledge_eval["spec"]["name"],
                             "spec_sha256": row.knowledge_eval["spec_sha256"]} if row.knowledge_eval else None),
        )


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class JobEventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None

    @classmethod
    def of(cls, row: JobEvent) -> JobEventObject:
        return cls(id=row.id, created_at=row.created_at, level=row.level, message=row.message, type=row.type,
                   data=row.data if row.data is not None else {})


class JobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEventObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class CheckpointObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]

    @classmethod
    def of(cls, row: Checkpoint) -> CheckpointObject:
        return cls(id=row.id, created_at=row.created_at, fine_tuned_model_checkpoint=row.model_name,
                   fine_tuning_job_id=row.job_id, step_number=row.step_number, metrics=row.metrics)


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CheckpointObject]
    has_more: bool
    first_id: str | None
    last_id: str | None
