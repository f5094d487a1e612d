"""A job's `integrations`: experiment trackers that receive its metrics, config and final model.

OpenAI's shape, `[{"type": "wandb", "wandb": {"project": ..., "name"?, "entity"?, "tags"?}}]`, plus ftaas's
`{"type": "mlflow", "mlflow": {"experiment"?, "run_name"?, "tags"?}}`. Credentials are never part of a job:
the W&B API key and the MLflow tracking URI (and MLflow's own credential variables) are the deployment's
settings. A body that tries to carry one (an `api_key`, a `tracking_uri`) is refused, and a job asking for
a tracker the deployment has not configured is refused at creation, before it queues.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

#: Keys that would carry credentials or destinations in a job body, refused with a pointed message.
CREDENTIAL_KEYS = frozenset({"api_key", "key", "token", "password", "secret", "tracking_uri", "base_url", "host"})


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def _refuse_credentials(cls, value: Any) -> Any:
        if isinstance(value, dict):
            carried = sorted(CREDENTIAL_KEYS & set(value))
            if carried:
                raise ValueError(f"{', '.join(carried)}: credentials and tracking destinations come from the "
                                 "deployment's settings, never from the job body")
        return value


class WandbOptions(_Options):
    project: str = Field(min_length=1, max_length=128)
    name: str | None = Field(default=None, max_length=128)
    entity: str | None = Field(default=None, max_length=128)
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(default=None, max_length=50)


class MlflowOptions(_Options):
    experiment: str = Field(default="ftaas", min_length=1, max_length=256)
    run_name: str | None = Field(default=None, max_length=256)
    tags: dict[str, Annotated[str, Field(max_length=500)]] | None = Field(default=None, max_length=50)


class WandbIntegration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["wandb"]
    wandb: WandbOptions

    @field_validator("wandb", mode="before")
    @classmethod
    def _credentials(cls, value: Any) -> Any:
        return _Options._refuse_credentials(value)


class MlflowIntegration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["mlflow"]
    mlflow: MlflowOptions = Field(default_factory=MlflowOptions)

    @field_validator("mlflow", mode="before")
    @classmethod
    def _credentials(cls, value: Any) -> Any:
        return _Options._refuse_credentials(value)


Integration = Annotated[WandbIntegration | MlflowIntegration, Field(discriminator="type")]
_INTEGRATIONS: TypeAdapter[list[Integration]] = TypeAdapter(list[Integration])


def parse_integrations(stored: list[dict[str, Any]] | None) -> list[WandbIntegration | MlflowIntegration]:
    """A job's stored integrations as their models."""
    return _INTEGRATIONS.validate_python(stored or [])
