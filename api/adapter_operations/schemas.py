"""Wire shapes of /v1/adapter_operations (an ftaas extension; reference: docs/adapters.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.fine_tuning.schemas import check_suffix
from db.tables import AdapterOperation


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    suffix: str | None = Field(default=None, description="Suffix of the new model's name (1-64 of A-Z a-z 0-9 _ . -).")
    metadata: dict[str, str] | None = None

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: str | None) -> str | None:
        return check_suffix(value)


class LinesParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(ge=0, le=4, description="Factor of the first layer's update.")
    beta: float = Field(ge=-4, le=4, description="Added linearly with depth: the last layer gets alpha + beta.")


class MergeRequest(_Request):
    type: Literal["merge"]
    models: list[str] = Field(min_length=2, max_length=16, description="Fine-tuned models or checkpoints of one base.")
    weights: list[float] | None = Field(default=None, description="One per model (default: equal, summing to 1).")
    method: Literal["linear", "ties", "dare_linear", "dare_ties"] = "linear"
    density: float = Field(default=1.0, gt=0, le=1, description="TIES/DARE: share of each update kept.")
    majority_sign: Literal["total", "frequency"] = "total"
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="DARE's random drop.")
    rank: int | None = Field(default=None, ge=1, le=512, description="Rank of the result (SVD re-factorisation).")
    lines: LinesParameters | None = Field(default=None, description="LiNeS layer scaling applied to the merge.")

    @model_validator(mode="after")
    def _weights(self) -> MergeRequest:
        if self.weights is not None and len(self.weights) != len(self.models):
            raise ValueError(f"'weights' has {len(self.weights)} entries for {len(self.models)} models")
        if self.weights is not None and any(abs(w) > 16 for w in self.weights):
            raise ValueError("weights must lie in [-16, 16]")
        if self.method == "linear" and self.density != 1.0:
            raise ValueError("'density' applies to ties, dare_linear and dare_ties")
        return self


class LinesRequest(_Request):
    type: Literal["lines"]
    model: str = Field(min_length=1)
    lines: LinesParameters


class CompressRequest(_Request):
    type: Literal["compress"]
    model: str = Field(min_length=1)
    density: float = Field(default=0.1, gt=0, le=0.5, description="Share of each tensor's entries kept.")


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["export"]
    model: str = Field(min_length=1)
    format: Literal["merged", "adapter"] = Field(
        default="merged", description="merged: base weights with the adapter folded in; adapter: the PEFT folder.")
    metadata: dict[str, str] | None = None


class ImportRequest(_Request):
    type: Literal["import"]
    file: str = Field(min_length=1, description="An uploaded zip or tar of a PEFT LoRA adapter folder.")
    base_model: str = Field(min_length=1)


OperationRequest = Annotated[MergeRequest | LinesRequest | CompressRequest | ExportRequest | ImportRequest,
                             Field(discriminator="type")]


class OperationError(BaseModel):
    code: str | None
    message: str | None
    param: str | None


class OperationProgress(BaseModel):
    stage: Literal["downloading", "merging", "compressing", "exporting", "importing", "storing"]
    #: units of the stage: parent adapters downloaded, modules merged, tensors compressed or exported
    done: int
    total: int


class AdapterOperationObject(BaseModel):
    id: str
    object: Literal["adapter_operation"] = "adapter_operation"
    type: str
    status: str
    created_at: int
    started_at: int | None
    finished_at: int | None
    base_model: str
    #: The model the operation makes (known from creation; servable once the operation has succeeded).
    model: str | None
    #: Exports: the file to download with the Files API.
    result_file: str | None
    parents: list[str]
    parameters: dict[str, Any]
    result: dict[str, Any] | None
    #: While running: the stage and how far it got (None otherwise).
    progress: OperationProgress | None = None
    error: OperationError | None
    metadata: dict[str, str] | None

    @classmethod
    def of(cls, row: AdapterOperation) -> AdapterOperationObject:
        params = dict(row.params)
        parents = [p["model"] for p in params.pop("parents", [])]
        public = {k: v for k, v in params.items() if k not in ("storage_key", "sha256", "bytes")}
        return cls(id=row.id, type=row.type, status=row.status, created_at=row.created_at, started_at=row.started_at,
                   finished_at=row.finished_at, base_model=row.base_model, model=row.result_model,
                   result_file=row.result_file_id, parents=parents, parameters=public, result=row.result,
                   progress=(OperationProgress(**row.progress) if row.progress and row.status == "running" else None),
                   error=OperationError(**row.error) if row.error else None, metadata=row.user_metadata)


class AdapterOperationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterOperationObject]
    has_more: bool
    first_id: str | None
    last_id: str | None
