"""Routes: /v1/webhooks (create, list, retrieve, delete, delivery log). With the SDK:
`client.post("/webhooks", body={"url": ...}, cast_to=object)`; the answer to the creation holds the signing
secret, shown once."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from api.dependencies import AuthenticatedCaller, CurrentCaller, Services
from api.pagination import cursor_query, list_page
from api.responses import model_response
from api.webhooks.schemas import (
    CreateWebhookRequest,
    WebhookDeliveryList,
    WebhookDeliveryObject,
    WebhookEndpointDeleted,
    WebhookEndpointList,
    WebhookEndpointObject,
)
from db import ids
from db.pagination import Cursor

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
EndpointCursor = Annotated[Cursor, Depends(cursor_query(ids.WEBHOOK_ENDPOINT))]
#: A delivery log reads oldest first by default, like a log; its ids are integers.
DeliveryCursor = Annotated[Cursor, Depends(cursor_query(None, order="asc"))]


@router.post("", response_model=WebhookEndpointObject)
async def create_webhook(body: CreateWebhookRequest, services: Services, caller: AuthenticatedCaller) -> Response:
    return await caller.run(lambda principal: model_response(WebhookEndpointObject.of(services.webhooks.create(
        principal, url=body.url, event_types=body.event_types, description=body.description), with_secret=True)))


@router.get("", response_model=WebhookEndpointList)
async def list_webhooks(services: Services, caller: CurrentCaller, cursor: EndpointCursor) -> Response:
    return await list_page(caller, lambda principal: services.webhooks.list(principal, cursor),
                           WebhookEndpointObject.of)


@router.get("/{webhook_id}", response_model=WebhookEndpointObject)
async def retrieve_webhook(webhook_id: str, services: Services, caller: CurrentCaller) -> Response:
    return await caller.run(lambda principal: model_response(
        WebhookEndpointObject.of(services.webhooks.get(principal, webhook_id))))


@router.delete("/{webhook_id}", response_model=WebhookEndpointDeleted)
async def delete_webhook(webhook_id: str, services: Services, caller: AuthenticatedCaller) -> Response:
    await caller.run(lambda principal: services.webhooks.delete(principal, webhook_id))
    return model_response(WebhookEndpointDeleted(id=webhook_id, deleted=True))


@router.get("/{webhook_id}/deliveries", response_model=WebhookDeliveryList)
async def list_deliveries(webhook_id: str, services: Services, caller: CurrentCaller,
                          cursor: DeliveryCursor) -> Response:
    return await list_page(caller, lambda principal: services.webhooks.deliveries(principal, webhook_id, cursor),
                           WebhookDeliveryObject.of)
