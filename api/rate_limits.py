"""Rate limits per API key and per project, as OpenAI applies them: requests per window on every
authenticated route, and tokens per window on the inference routes. A request over a limit is a 429
(`rate_limit_exceeded`) with `Retry-After` and the `x-ratelimit-*-requests` or `-tokens` headers, which the
official SDK reads to wait and retry; a request whose tokens alone exceed the limit is refused with
`x-should-retry: false` (it could never pass). Every answer to an authenticated request carries the
`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers of the caller's key (OpenAI sends them on
every response), collected in `RateLimitHeaders` and added by `RequestContextMiddleware`.

Tokens are counted at admission as OpenAI counts them: the larger of the request's completion allowance
(`max_tokens` x choices, where given) and its prompt estimated from its characters (4 per token), so the
limit is known before the model runs.

The counting is the `limits` library's sliding-window counter (two counters per window, so memory does not
grow with the rate), in process memory for the embedded deployment and in Redis (the broker) when the API
runs as several replicas, so every replica sees the same counts. Its check-and-count is one atomic call. A
limit of 0 is off. When the counts' store fails, requests pass uncounted (a rate limit is not worth an
outage).
"""

from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from contracts.errors import RateLimited
from contracts.settings import RateLimitSettings
from db.projects import Principal

log = logging.getLogger(__name__)

#: a response's rate-limit headers, filled while the request runs (scope state) and sent with its answer
RateLimitHeaders = dict[str, str]


class RequestLimiter:
    """`storage_uri`: where the counts live, "memory://" or a redis:// URL."""

    def __init__(self, settings: RateLimitSettings, storage_uri: str) -> None:
        self.settings = settings
        options: dict[str, float | str | bool] = {}
        if storage_uri.startswith(("redis://", "rediss://")):
            options = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
        self.limiter = SlidingWindowCounterRateLimiter(storage_from_string(storage_uri, **options))
        window = settings.window_seconds

        def scopes(unit: str, per_key: int, per_project: int) -> list[tuple[str, RateLimitItem]]:
            return [(scope, RateLimitItemPerSecond(amount, window, namespace=f"ftaas-{unit}-{scope}"))
                    for scope, amount in (("key", per_key), ("project", per_project)) if amount]

        self.request_scopes = scopes("requests", settings.requests_per_key, settings.requests_per_project)
        self.token_scopes = scopes("tokens", settings.tokens_per_key, settings.tokens_per_project)

    def check(self, principal: Principal, headers: RateLimitHeaders | None = None) -> None:
        """Count one request of `principal` (its key and its project); RateLimited when either is spent."""
        self._count("requests", self.request_scopes, principal, 1, headers)

    def charge_tokens(self, principal: Principal, tokens: int, headers: RateLimitHeaders | None = None) -> None:
        """Count an inference request's `tokens` (see the module docstring); RateLimited when they do not fit."""
        self._count("tokens", self.token_scopes, principal, tokens, headers)

    def _count(self, unit: str, scopes: list[tuple[str, RateLimitItem]], principal: Principal, cost: int,
               headers: RateLimitHeaders | None) -> None:
        identities = {"key": principal.api_key_id, "project": principal.project_id}
        try:
            for scope, item in scopes:
                if cost > item.amount:
                    raise RateLimited(
                        f"Request too large for {unit} per {_scope_name(scope)}: {cost} {unit} asked, the limit is "
                        f"{item.amount} per {self.settings.window_seconds} s.",
                        limit=item.amount, reset_seconds=self.settings.window_seconds, unit=unit, retryable=False)
                counted = self.limiter.hit(item, identities[scope], cost=cost)  # atomic check-and-count
                wants_headers = headers is not None and scope == "key"
                if counted and not wants_headers:
                    continue  # the window's figures are needed only for a refusal or the key's headers
                stats = self.limiter.get_window_stats(item, identities[scope])
                wait = max(0.001, stats.reset_time - time.time())
                if not counted:
                    raise RateLimited(
                        f"Rate limit reached for {unit} per {_scope_name(scope)}: {item.amount} per "
                        f"{self.settings.window_seconds} s. Retry in {wait:.1f} s.",
                        limit=item.amount, reset_seconds=wait, unit=unit)
                assert headers is not None
                headers.update({f"x-ratelimit-limit-{unit}": str(item.amount),
                                f"x-ratelimit-remaining-{unit}": str(max(0, stats.remaining)),
                                f"x-ratelimit-reset-{unit}": reset_header(wait)})
        except RateLimited:
            raise
        except Exception as exc:  # noqa: BLE001 - the counts' store failed: let the request through (docstring)
            log.warning("rate limits not applied: their store failed: %s", exc)


def _scope_name(scope: str) -> str:
    return "API key" if scope == "key" else scope


def reset_header(seconds: float) -> str:
    """OpenAI's duration format for `x-ratelimit-reset-*`: "120ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 1):g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"
