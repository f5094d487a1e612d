"""Request rate limits per API key and per project, as OpenAI applies them: a request over a limit is a 429
(`rate_limit_exceeded`) with `Retry-After` and the `x-ratelimit-*-requests` headers, which the official SDK
reads to wait and retry.

The counting is the `limits` library's sliding-window counter (two counters per window, so memory does not
grow with the rate), in process memory for the embedded deployment and in Redis (the broker) when the API
runs as several replicas, so every replica sees the same counts. A limit of 0 is off.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerSecond
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from contracts.errors import RateLimited
from db.projects import Principal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RateLimitSettings:
    per_key: int  # requests per window and API key (0: no limit)
    per_project: int  # requests per window and project (0: no limit)
    window_seconds: int
    storage_uri: str  # "memory://" or a redis:// URL


class RequestLimiter:
    def __init__(self, settings: RateLimitSettings) -> None:
        self.settings = settings
        options: dict[str, float | str | bool] = {}
        if settings.storage_uri.startswith(("redis://", "rediss://")):
            options = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
        self.limiter = SlidingWindowCounterRateLimiter(storage_from_string(settings.storage_uri, **options))
        window = settings.window_seconds
        self.scopes = [(scope, RateLimitItemPerSecond(amount, window, namespace=f"ftaas-{scope}"))
                       for scope, amount in (("key", settings.per_key), ("project", settings.per_project)) if amount]

    def check(self, principal: Principal) -> None:
        """Count one request of `principal` (its key and its project); RateLimited when either is spent.
        A refused request is not counted."""
        try:
            self._check(principal)
        except RateLimited:
            raise
        except Exception as exc:  # noqa: BLE001 - the counts' store failed: let the request through (docstring)
            log.warning("rate limits not applied: their store failed: %s", exc)

    def _check(self, principal: Principal) -> None:
        identities = {"key": principal.api_key_id, "project": principal.project_id}
        for scope, item in self.scopes:
            if not self.limiter.test(item, identities[scope]):
                stats = self.limiter.get_window_stats(item, identities[scope])
                wait = max(0.001, stats.reset_time - time.time())
                raise RateLimited(
                    f"Rate limit reached for requests per {scope.replace('key', 'API key')}: "
                    f"{item.amount} per {self.settings.window_seconds} s. Retry in {wait:.1f} s.",
                    limit=item.amount, reset_seconds=wait)
        for scope, item in self.scopes:
            self.limiter.hit(item, identities[scope])


def reset_header(seconds: float) -> str:
    """OpenAI's duration format for `x-ratelimit-reset-*`: "120ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 1):g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"
