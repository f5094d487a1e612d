"""Routes: /v1/models. Model names contain ':' (ft:...), so the id is a path parameter that may hold it."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.dependencies import CurrentCaller, Services
from api.models.schemas import ModelDeleted, ModelList, ModelObject
from api.responses import model_response

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
async def list_models(services: Services, caller: CurrentCaller) -> Response:
    return await caller.run(lambda principal: model_response(ModelList(data=services.models.list(principal))))


@router.get("/{model:path}", response_model=ModelObject)
async def retrieve_model(model: str, services: Services, caller: CurrentCaller) -> Response:
    return await caller.run(lambda principal: model_response(services.models.retrieve(principal, model)))


@router.delete("/{model:path}", response_model=ModelDeleted)
async def delete_model(model: str, services: Services, caller: CurrentCaller) -> Response:
    await caller.run(lambda principal: services.models.delete(principal, model))
    return model_response(ModelDeleted(id=model, deleted=True))
