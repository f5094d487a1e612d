"""Routes: /v1/webhooks (create, list, retrieve, delete, delivery log). With the SDK:
`client.post("/webhooks", body={"url": ...}, cast_to=object)`; the answer to the creation holds the signing
secret, shown once."""

from __future__ import annotations

from fastapi import APIRouter

from api.dependencies import AuthenticatedCaller, CurrentCaller, Services
from api.pagination import check_cursor, check_limit
from api.responses import list_response, model_response
from api.webhooks.schemas import (
    CreateWebhookRequest,
    WebhookDeliveryList,
    WebhookDeliveryObject,
    WebhookEndpointDeleted,
    WebhookEndpointList,
    WebhookEndpointObject,
)
from db import ids

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post("", response_model=WebhookEndpointObject)
async def create_webhook(body: CreateWebhookRequest, services: Services, caller: AuthenticatedCaller):  # type: ignore[no-untyped-def]
    return await caller.run(lambda principal: model_response(WebhookEndpointObject.of(services.webhooks.create(
        principal, url=body.url, event_types=body.event_types, description=body.description), with_secret=True)))


@router.get("", response_model=WebhookEndpointList)
async def list_webhooks(services: Services, caller: CurrentCaller, after: str | None = None, limit: int = 20):  # type: ignore[no-untyped-def]
    after, limit = check_cursor(after, ids.WEBHOOK_ENDPOINT), check_limit(limit, maximum=100)

    def work(principal):  # type: ignore[no-untyped-def]
        page = services.webhooks.list(principal, after=after, limit=limit)
        return list_response([WebhookEndpointObject.of(row) for row in page.items], has_more=page.has_more)

    return await caller.run(work)


@router.get("/{webhook_id}", response_model=WebhookEndpointObject)
async def retrieve_webhook(webhook_id: str, services: Services, caller: CurrentCaller):  # type: ignore[no-untyped-def]
    return await caller.run(lambda principal: model_response(
        WebhookEndpointObject.of(services.webhooks.get(principal, webhook_id))))


@router.delete("/{webhook_id}", response_model=WebhookEndpointDeleted)
async def delete_webhook(webhook_id: str, services: Services, caller: AuthenticatedCaller):  # type: ignore[no-untyped-def]
    await caller.run(lambda principal: services.webhooks.delete(principal, webhook_id))
    return model_response(WebhookEndpointDeleted(id=webhook_id, deleted=True))


@router.get("/{webhook_id}/deliveries", response_model=WebhookDeliveryList)
async def list_deliveries(webhook_id: str, services: Services, caller: CurrentCaller):  # type: ignore[no-untyped-def]
    return await caller.run(lambda principal: model_response(WebhookDeliveryList(
        data=[WebhookDeliveryObject.of(row) for row in services.webhooks.deliveries(principal, webhook_id)])))
