"""Webhook endpoints of a project: created only for URLs that pass `check_destination`, listed without their
secrets, deleted with their pending deliveries."""

from __future__ import annotations

from sqlalchemy.orm import Session

from contracts.errors import NotFound
from contracts.webhooks.destinations import check_destination
from db import webhooks
from db.pagination import Cursor, Page
from db.projects import Principal
from db.session import Database
from db.tables import WebhookDelivery, WebhookEndpoint


class WebhookService:
    def __init__(self, db: Database, *, allow_private_networks: bool) -> None:
        self.db = db
        self.allow_private_networks = allow_private_networks

    def create(self, principal: Principal, *, url: str, event_types: list[str] | None,
               description: str | None) -> WebhookEndpoint:
        """A new endpoint (its secret is on the returned row); a 400 (`invalid_webhook_url`) for a URL that
        is not http(s) or resolves to an address webhooks may not reach, and nothing is stored."""
        url = check_destination(url, allow_private=self.allow_private_networks)
        with self.db.write() as session:
            endpoint = webhooks.create_endpoint(session, principal.project_id, url=url, event_types=event_types,
                                                description=description)
            session.expunge(endpoint)
            return endpoint

    def list(self, principal: Principal, cursor: Cursor) -> Page[WebhookEndpoint]:
        with self.db.read() as session:
            return webhooks.list_endpoints(session, principal.project_id, cursor)

    def get(self, principal: Principal, endpoint_id: str) -> WebhookEndpoint:
        with self.db.read() as session:
            return self._get(session, principal, endpoint_id)

    def delete(self, principal: Principal, endpoint_id: str) -> None:
        with self.db.write() as session:
            webhooks.delete_endpoint(session, self._get(session, principal, endpoint_id))

    def deliveries(self, principal: Principal, endpoint_id: str, cursor: Cursor) -> Page[WebhookDelivery]:
        with self.db.read() as session:
            self._get(session, principal, endpoint_id)
            return webhooks.deliveries_page(session, endpoint_id, cursor)

    @staticmethod
    def _get(session: Session, principal: Principal, endpoint_id: str) -> WebhookEndpoint:
        endpoint = webhooks.get_endpoint(session, principal.project_id, endpoint_id)
        if endpoint is None:
            raise NotFound(f"No webhook endpoint with id '{endpoint_id}'.", code="webhook_endpoint_not_found",
                           param="webhook_id")
        return endpoint
