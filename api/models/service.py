"""Models: the registry's base models plus the project's fine-tuned models and their checkpoints."""

from __future__ import annotations

from collections.abc import Callable

from api.models.schemas import SYSTEM_OWNER, ModelObject
from basemodels.registry import BaseModelRegistry
from contracts.errors import InvalidRequest, NotFound, PermissionDenied
from db import checkpoints, models
from db.projects import Principal
from db.session import Database
from storage import ArtifactStore


class ModelService:
    def __init__(self, db: Database, store: ArtifactStore, registry: BaseModelRegistry) -> None:
        self.db = db
        self.store = store
        self.registry = registry
        #: Called with the storage prefix of a deleted model (e.g. to evict it from an inference cache).
        self.on_deleted: list[Callable[[str], None]] = []

    def list(self, principal: Principal) -> list[ModelObject]:
        listed = [ModelObject(id=name, created=0, owned_by=SYSTEM_OWNER) for name in self.registry.names()]
        with self.db.read() as session:
            rows = models.list_for_project(session, principal.project_id)
            made = models.provenance(session, principal.project_id, rows)
            for row in rows:
                listed.append(ModelObject(id=row.id, created=row.created_at, owned_by=principal.project_id,
                                          base_model=row.base_model, provenance=made.get(row.id)))
        return listed

    def retrieve(self, principal: Principal, name: str) -> ModelObject:
        if name in self.registry:
            return ModelObject(id=name, created=0, owned_by=SYSTEM_OWNER)
        with self.db.read() as session:
            row = models.get(session, principal.project_id, name)
            if row is not None:
                return ModelObject(id=row.id, created=row.created_at, owned_by=principal.project_id,
                                   base_model=row.base_model,
                                   provenance=models.provenance(session, principal.project_id, [row]).get(row.id))
            checkpoint = checkpoints.by_model_name(session, principal.project_id, name)
            if checkpoint is not None:
                return ModelObject(id=checkpoint.model_name, created=checkpoint.created_at,
                                   owned_by=principal.project_id, provenance={
                                       "type": "fine_tuning_checkpoint", "fine_tuning_job": checkpoint.job_id,
                                       "step": checkpoint.step_number})
        raise _not_found(name)

    def delete(self, principal: Principal, name: str) -> None:
        if name in self.registry:
            raise PermissionDenied(f"{name} is a base model of this installation and cannot be deleted.",
                                   code="model_not_deletable", param="model")
        with self.db.write() as session:
            row = models.get(session, principal.project_id, name)
            if row is None:
                if checkpoints.by_model_name(session, principal.project_id, name) is not None:
                    raise InvalidRequest("Checkpoints are kept with their job and cannot be deleted on their own.",
                                         code="model_not_deletable", param="model")
                raise _not_found(name)
            prefix = row.storage_prefix
            models.delete(session, row)
        # After commit: the row is gone, so nothing can resolve the artifacts any more.
        self.store.delete_prefix(prefix)
        for listener in self.on_deleted:
            listener(prefix)


def _not_found(name: str) -> NotFound:
    return NotFound(f"The model '{name}' does not exist or you do not have access to it.", code="model_not_found",
                    param="model")
