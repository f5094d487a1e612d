"""Wire shapes of /v1/webhooks: a project's webhook endpoints and their delivery log."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contracts.webhooks.events import EVENT_TYPES


class CreateWebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    #: the event types to receive (contracts.webhooks.events); omitted: all of them
    event_types: list[str] | None = Field(default=None, min_length=1, max_length=len(EVENT_TYPES))
    description: str | None = Field(default=None, max_length=512)

    @field_validator("event_types")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        unknown = sorted(set(value or []) - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event types {unknown}; known: {', '.join(EVENT_TYPES)}")
        return sorted(set(value)) if value is not None else None


class WebhookEndpointObject(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    event_types: list[str]
    description: str | None
    created_at: int
    #: the signing secret (`whsec_...`): in the answer to the creation only, never again
    secret: str | None = None

    @classmethod
    def of(cls, row: Any, *, with_secret: bool = False) -> WebhookEndpointObject:
        return cls(id=row.id, url=row.url, event_types=row.event_types or list(EVENT_TYPES),
                   description=row.description, created_at=row.created_at,
                   secret=row.secret if with_secret else None)


class WebhookEndpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookEndpointObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class WebhookEndpointDeleted(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    deleted: bool


class WebhookDeliveryObject(BaseModel):
    """One event sent (or being sent) to the endpoint."""

    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    event_id: str
    event_type: str
    attempts: int
    status: Literal["pending", "delivered", "abandoned"]
    delivered_at: int | None
    last_status_code: int | None
    last_error: str | None

    @classmethod
    def of(cls, row: Any) -> WebhookDeliveryObject:
        status = "delivered" if row.delivered_at else "abandoned" if row.abandoned_at else "pending"
        return cls(id=str(row.id), event_id=row.event_id, event_type=row.event_type, attempts=row.attempts,
                   status=status, delivered_at=int(row.delivered_at) if row.delivered_at else None,
                   last_status_code=row.last_status, last_error=row.last_error)


class WebhookDeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookDeliveryObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool
