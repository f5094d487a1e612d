"""Wire shapes of the Models API (OpenAI's Models API)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, model_serializer

#: `owned_by` of the base models an installation offers.
SYSTEM_OWNER = "ftaas"


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    #: Unix seconds; 0 for base models, which have no creation time of their own here.
    created: int
    owned_by: str
    #: ftaas extensions (OpenAI's SDK keeps unknown fields): a fine-tuned model's base model, and where it came
    #: from: {"type": "fine_tuning_job", "fine_tuning_job"} | {"type": "fine_tuning_checkpoint",
    #: "fine_tuning_job", "step"} | {"type": "training_api", "training_run", "checkpoint"} |
    #: {"type": "adapter_operation", "adapter_operation", "operation"}; None for base models
    base_model: str | None = None
    provenance: dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _without_absent_extensions(self, handler: Any) -> dict[str, Any]:
        """A base model's object is OpenAI's exactly: the extensions appear only where they have a value."""
        data: dict[str, Any] = handler(self)
        for name in ("base_model", "provenance"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool
