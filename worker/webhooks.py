"""Webhook delivery: the dispatcher that sends the webhook outbox (db.webhooks) to project endpoints.

Each delivery is a POST of the event's JSON, signed by the Standard Webhooks scheme (the `standardwebhooks`
library, as OpenAI signs its webhooks): headers `webhook-id` (the event id, the same on every attempt, for
deduplication), `webhook-timestamp` and `webhook-signature`. A 2xx answer is delivered; anything else (an
error status, a refused connection, a timeout) is retried with exponential backoff and jitter
(`webhook_retry_base_seconds` x 4^n, at most a day) until `webhook_max_attempts`, then abandoned. The URL's
host is checked again before every attempt (it may resolve elsewhere now) and redirects are not followed.

The dispatcher runs on its own thread beside the outbox relay (worker.maintenance), so a slow or unreachable
endpoint never holds up jobs, task publishing or other endpoints beyond its own timeout.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from contracts.errors import InvalidRequest
from contracts.settings import Settings
from contracts.webhooks.destinations import check_destination
from db import webhooks
from db.session import Database

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 24 * 3600
USER_AGENT = "ftaas-webhooks/1"


def retry_delay(attempt: int, base: float, *, rng: random.Random | None = None) -> float:
    """Seconds before attempt `attempt + 1`, after `attempt` failures: base x 4^(attempt-1), +-20 % jitter."""
    jitter = (rng or random).uniform(0.8, 1.2)
    return min(MAX_BACKOFF_SECONDS, base * 4 ** max(0, attempt - 1)) * jitter


def signed_request(delivery: webhooks.DueDelivery, now: datetime) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one attempt."""
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    signature = Webhook(delivery.secret).sign(delivery.event_id, now, body.decode())
    return body, {"content-type": "application/json", "user-agent": USER_AGENT, "webhook-id": delivery.event_id,
                  "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature}


class WebhookDispatcher:
    def __init__(self, db: Database, settings: Settings, *, client: httpx.Client | None = None) -> None:
        self.db = db
        self.settings = settings
        self.client = client or httpx.Client(timeout=settings.webhooks.timeout_seconds, follow_redirects=False)

    def deliver_due(self, now: float | None = None) -> int:
        """Send every due delivery once; returns how many were delivered."""
        now = time.time() if now is None else now
        # Claimed for longer than one attempt can take, so no other dispatcher sends it meanwhile.
        with self.db.write() as session:
            due = webhooks.claim_due(session, now=now, claim_seconds=4 * self.settings.webhooks.timeout_seconds + 30)
        delivered = 0
        for delivery in due:
            status, error = self._attempt(delivery)
            finished = time.time()
            with self.db.write() as session:
                if error is None:
                    webhooks.record_delivered(session, delivery.id, status=status or 0, now=finished)
                    delivered += 1
                    continue
                attempts = delivery.attempts + 1
                retry_at = None if attempts >= self.settings.webhooks.max_attempts else \
                    finished + retry_delay(attempts, self.settings.webhooks.retry_base_seconds)
                webhooks.record_failed(session, delivery.id, status=status, error=error, retry_at=retry_at,
                                       now=finished)
            log.warning("webhook %s (%s) to %s failed (attempt %d): %s%s", delivery.event_id, delivery.event_type,
                        delivery.url, attempts, error, "" if retry_at else "; abandoned")
        return delivered

    def _attempt(self, delivery: webhooks.DueDelivery) -> tuple[int | None, str | None]:
        """(HTTP status or None, error or None when delivered)."""
        try:
            check_destination(delivery.url, allow_private=self.settings.webhooks.allow_private_networks)
        except InvalidRequest as exc:
            return None, str(exc)
        body, headers = signed_request(delivery, datetime.now(tz=UTC))
        try:
            response = self.client.post(delivery.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"HTTP {response.status_code}"

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.deliver_due()
            except Exception:  # the database was away: try again next round
                log.exception("webhook delivery round failed, will retry")
            stop.wait(self.settings.webhooks.poll_seconds)
