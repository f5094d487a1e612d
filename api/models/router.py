"""Routes: /v1/models. Model names contain ':' (ft:...), so the id is a path parameter that may hold it."""

from __future__ import annotations

from fastapi import APIRouter

from api.dependencies import CurrentPrincipal, Services
from api.models.schemas import ModelDeleted, ModelList, ModelObject

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
def list_models(services: Services, principal: CurrentPrincipal) -> ModelList:
    return ModelList(data=services.models.list(principal))


@router.get("/{model:path}", response_model=ModelObject)
def retrieve_model(model: str, services: Services, principal: CurrentPrincipal) -> ModelObject:
    return services.models.retrieve(principal, model)


@router.delete("/{model:path}", response_model=ModelDeleted)
def delete_model(model: str, services: Services, principal: CurrentPrincipal) -> ModelDeleted:
    services.models.delete(principal, model)
    return ModelDeleted(id=model, deleted=True)
