"""Request-scoped dependencies: the services container and the authenticated caller.

Threading model (measured in docs/benchmarks.md): route handlers are `async`; every piece of blocking
work of a request (authentication and the service call, both on the database) runs in **one** hop to a
small dedicated thread pool, via `Caller.run`. Blocking calls never run on the event loop (a slow database
would stall every request, health probes included), and FastAPI's per-dependency and per-response
thread hops, which cost more than the queries themselves under load, are avoided.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from contracts.errors import AuthenticationFailed, NotFound
from contracts.inference.backend import InferenceBackend
from contracts.settings import Settings
from db import projects
from db.projects import Principal
from db.session import Database

if TYPE_CHECKING:
    from api.adapter_operations.service import AdapterOperationService
    from api.files.service import FileService
    from api.fine_tuning.service import JobService
    from api.graders.service import GraderService
    from api.knowledge_evals.service import KnowledgeEvalService
    from api.models.service import ModelService
    from api.rate_limits import RateLimitHeaders, RequestLimiter
    from api.stored_completions.service import StoredCompletionService
    from api.training_api.service import TrainingApiService
    from api.webhooks.service import WebhookService
    from basemodels.registry import BaseModelRegistry
    from storage import ArtifactStore

T = TypeVar("T")


@dataclass
class ApiServices:
    """Everything the routes need, built once per process by `api.app.create_app`."""

    settings: Settings
    db: Database
    store: ArtifactStore
    registry: BaseModelRegistry
    files: FileService
    stored_completions: StoredCompletionService
    jobs: JobService
    models: ModelService
    knowledge_evals: KnowledgeEvalService
    adapter_operations: AdapterOperationService
    webhooks: WebhookService
    graders: GraderService
    training_api: TrainingApiService
    #: Runs the blocking part of each request (see the module docstring).
    executor: ThreadPoolExecutor
    #: Optional extras mounted by the launcher (readiness checks of the process's own dependencies).
    extras: dict[str, Any]
    #: The engine behind the inference routes, where this process serves models (`ftaas up`, `ftaas serve`).
    inference: InferenceBackend | None = None
    #: Request rate limits per key and project (api.rate_limits); None: none.
    rate_limits: RequestLimiter | None = None

    async def run_blocking(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, work)


async def get_services(request: Request) -> ApiServices:
    return request.app.state.services


Services = Annotated[ApiServices, Depends(get_services)]


async def get_inference(services: Services) -> InferenceBackend:
    if services.inference is None:  # the inference routes are mounted only beside an engine
        raise NotFound("This process serves no models.", code="not_found")
    return services.inference


Inference = Annotated[InferenceBackend, Depends(get_inference)]


@dataclass(frozen=True)
class Caller:
    """A request's bearer key; checked against the database in the same hop as the request's work, unless
    a dependency already did (`known`)."""

    services: ApiServices
    key: str
    known: Principal | None = None
    #: this response's x-ratelimit-* headers (the request's scope state, sent by RequestContextMiddleware)
    rate_limit_headers: RateLimitHeaders = field(default_factory=dict)

    def authenticate(self) -> Principal:
        """Blocking: look the key up (call from the worker thread, or use `run`)."""
        if self.known is not None:
            return self.known
        with self.services.db.read() as session:
            principal = projects.authenticate(session, self.key)
        if principal is None:
            raise AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
        if self.services.rate_limits is not None:
            self.services.rate_limits.check(principal, self.rate_limit_headers)
        return principal

    def charge_tokens(self, principal: Principal, tokens: int) -> None:
        """Count an inference request's tokens against its key's and project's limits (RateLimited)."""
        if self.services.rate_limits is not None:
            self.services.rate_limits.charge_tokens(principal, tokens, self.rate_limit_headers)

    async def run(self, work: Callable[[Principal], T]) -> T:
        """Authenticate, then `work(principal)`, in one thread-pool hop and one read transaction (which
        the service's own reads join; its writes open their own transactions)."""

        def in_thread() -> T:
            with self.services.db.read():
                return work(self.authenticate())

        return await self.services.run_blocking(in_thread)

    async def principal(self) -> Principal:
        """Authenticate alone (for handlers whose work is async, such as streamed uploads)."""
        return await self.services.run_blocking(self.authenticate)


_bearer = HTTPBearer(auto_error=False, description="An ftaas API key (`ftaas keys create`).")


async def get_caller(request: Request, services: Services,
                     _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Caller:
    # The HTTPBearer dependency documents the scheme in OpenAPI; the header is parsed here so that a wrong
    # scheme is reported as such rather than as a missing key.
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it in the Authorization header as 'Bearer <key>'.",
            code="missing_api_key")
    scheme, _sep, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("Malformed Authorization header; expected 'Bearer <key>'.", code="invalid_api_key")
    return Caller(services, token.strip(),
                  rate_limit_headers=request.scope.setdefault("state", {}).setdefault("rate_limit_headers", {}))


CurrentCaller = Annotated[Caller, Depends(get_caller)]


async def get_authenticated_caller(caller: CurrentCaller) -> Caller:
    """For routes with a request body: FastAPI validates bodies before the handler runs, and an
    unauthenticated client must get 401, not a lesson in the body schema. Costs these routes a second hop."""
    return replace(caller, known=await caller.principal())


AuthenticatedCaller = Annotated[Caller, Depends(get_authenticated_caller)]
