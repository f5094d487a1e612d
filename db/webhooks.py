"""Webhook endpoints and the webhook outbox (one delivery row per event and endpoint).

`announce` writes deliveries in the transaction of the state change they report (db.leased calls it when
work ends), so an event is never lost and never sent for a change that rolled back. worker.webhooks delivers
them: it claims due rows by pushing their next attempt out by a claim window (committed before any HTTP
call, so no transaction is held open across a slow endpoint and two dispatchers do not send the same row
at once), then records the outcome. At-least-once: a dispatcher that dies after sending re-sends after the
window, with the same `webhook-id`.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from db import ids
from db.pagination import Cursor, Page, fetch_page
from db.tables import WebhookDelivery, WebhookEndpoint


def new_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def create_endpoint(session: Session, project_id: str, *, url: str, event_types: list[str] | None,
                    description: str | None) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(id=ids.new_id(ids.WEBHOOK_ENDPOINT), project_id=project_id, url=url,
                               secret=new_secret(), event_types=event_types, description=description,
                               created_at=int(time.time()))
    session.add(endpoint)
    session.flush()
    return endpoint


def get_endpoint(session: Session, project_id: str, endpoint_id: str) -> WebhookEndpoint | None:
    return session.scalar(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id,
                                                        WebhookEndpoint.project_id == project_id))


def list_endpoints(session: Session, project_id: str, cursor: Cursor) -> Page[WebhookEndpoint]:
    return fetch_page(session, select(WebhookEndpoint).where(WebhookEndpoint.project_id == project_id),
                      WebhookEndpoint.id, cursor)


def delete_endpoint(session: Session, endpoint: WebhookEndpoint) -> None:
    """The endpoint and its pending deliveries (nothing more is sent to it)."""
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
                    .execution_options(synchronize_session=False))
    session.delete(endpoint)


def announce(session: Session, project_id: str, event_type: str, data: dict[str, Any]) -> int:
    """Queue `event_type` for every endpoint of the project that takes it; returns how many."""
    endpoints = [e for e in session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.project_id == project_id))
                 if e.event_types is None or event_type in e.event_types]
    if not endpoints:
        return 0
    now = time.time()
    event_id = ids.new_id(ids.WEBHOOK_EVENT)
    payload = {"id": event_id, "object": "event", "created_at": int(now), "type": event_type, "data": data}
    for endpoint in endpoints:
        session.add(WebhookDelivery(endpoint_id=endpoint.id, event_id=event_id, event_type=event_type,
                                    payload=payload, created_at=now, attempts=0, next_attempt_at=now))
    return len(endpoints)


@dataclass(frozen=True)
class DueDelivery:
    id: int
    event_id: str
    event_type: str
    payload: dict[str, Any]
    attempts: int
    created_at: float
    url: str
    secret: str


def claim_due(session: Session, *, now: float, claim_seconds: float, limit: int = 50) -> list[DueDelivery]:
    """Due deliveries, oldest first, each pushed `claim_seconds` out so no other dispatcher takes it while
    this one sends (the caller commits before sending)."""
    stmt = (select(WebhookDelivery, WebhookEndpoint.url, WebhookEndpoint.secret)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(WebhookDelivery.delivered_at.is_(None), WebhookDelivery.abandoned_at.is_(None),
                   WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at).limit(limit))
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(of=WebhookDelivery, skip_locked=True)
    due = [DueDelivery(d.id, d.event_id, d.event_type, dict(d.payload), d.attempts, d.created_at, url, secret)
           for d, url, secret in session.execute(stmt)]
    if due:
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_([d.id for d in due]))
                        .values(next_attempt_at=now + claim_seconds).execution_options(synchronize_session=False))
    return due


def record_delivered(session: Session, delivery_id: int, *, status: int, now: float) -> None:
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(
        delivered_at=now, last_status=status, last_error=None, attempts=WebhookDelivery.attempts + 1))


def record_failed(session: Session, delivery_id: int, *, status: int | None, error: str,
                  retry_at: float | None, now: float) -> None:
    """A failed attempt: tried again at `retry_at`, or abandoned (None: attempts exhausted)."""
    values: dict[str, Any] = {"last_status": status, "last_error": error[:2000],
                              "attempts": WebhookDelivery.attempts + 1}
    if retry_at is None:
        values["abandoned_at"] = now
    else:
        values["next_attempt_at"] = retry_at
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values))


def deliveries_page(session: Session, endpoint_id: str, cursor: Cursor) -> Page[WebhookDelivery]:
    """A page of an endpoint's deliveries (its delivery log), in the order the events were announced."""
    return fetch_page(session, select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id),
                      WebhookDelivery.id, cursor)
