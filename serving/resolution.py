"""Which model a request names: a base model, or a fine-tuned model or checkpoint of the caller's project
(404 for anything else, other projects' models included), and the weighted adapters of a composition."""

from __future__ import annotations

from dataclasses import dataclass

from basemodels.registry import BaseModelRegistry
from contracts.errors import InvalidRequest, NotFound
from contracts.inference.schemas import ChatCompletionRequest, CompletionRequest
from db import models
from db.projects import Principal
from db.session import Database
from serving.adapters import AdapterRef


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    base_model: str
    adapter: AdapterRef | None


class ModelResolver:
    def __init__(self, db: Database, registry: BaseModelRegistry) -> None:
        self.db = db
        self.registry = registry

    def resolve(self, principal: Principal, name: str, *, param: str = "model") -> ResolvedModel:
        """The caller's model by name: a base model, an `ft:` model or a checkpoint. 404 otherwise."""
        if name in self.registry:
            return ResolvedModel(name, name, None)
        with self.db.read() as session:
            found = models.find_adapter(session, principal.project_id, name)
        if found is not None:
            return ResolvedModel(name, found.base_model, AdapterRef(found.storage_prefix, found.manifest_sha256, name))
        raise NotFound(f"The model '{name}' does not exist or you do not have access to it.",
                       code="model_not_found", param=param)

    def resolve_request(self, principal: Principal, request: ChatCompletionRequest | CompletionRequest
                        ) -> tuple[ResolvedModel, list[tuple[ResolvedModel, float]]]:
        resolved = self.resolve(principal, request.model)
        parts: list[tuple[ResolvedModel, float]] = []
        if request.adapters:
            if resolved.adapter is not None:
                raise InvalidRequest("With 'adapters', 'model' must be the base model the adapters share.",
                                     param="model")
            for index, part in enumerate(request.adapters):
                model = self.resolve(principal, part.model, param=f"adapters.{index}.model")
                if model.adapter is None:
                    raise InvalidRequest("Each entry of 'adapters' must be a fine-tuned model or checkpoint.",
                                         param=f"adapters.{index}.model")
                if model.base_model != resolved.base_model:
                    raise InvalidRequest(f"'{part.model}' was trained on '{model.base_model}', not "
                                         f"'{resolved.base_model}'.", code="adapter_base_mismatch",
                                         param=f"adapters.{index}.model")
                parts.append((model, part.weight))
        return resolved, parts
