"""The FastAPI application factory: `create_app(settings)` wires every collaborator once per process."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI

import contracts
from api import errors
from api.adapter_operations.router import router as adapter_operations_router
from api.adapter_operations.service import AdapterOperationService
from api.console.router import router as console_router
from api.dependencies import ApiServices
from api.files.router import router as files_router
from api.files.service import FileService
from api.fine_tuning.router import router as jobs_router
from api.fine_tuning.service import JobService
from api.graders.router import router as graders_router
from api.graders.service import GraderService
from api.health.router import router as health_router
from api.knowledge_evals.router import router as knowledge_evals_router
from api.knowledge_evals.service import KnowledgeEvalService
from api.middleware import BodyLimitMiddleware, RequestContextMiddleware, StorableTextMiddleware
from api.models.router import router as models_router
from api.models.service import ModelService
from api.rate_limits import RequestLimiter
from api.stored_completions.router import router as stored_completions_router
from api.stored_completions.service import StoredCompletionService
from api.training_api.router import router as training_api_router
from api.training_api.service import TrainingApiService
from api.webhooks.router import router as webhooks_router
from api.webhooks.service import WebhookService
from basemodels.loader import BaseModelLoader
from basemodels.registry import BaseModelRegistry
from contracts.settings import Settings
from db.session import Database
from storage import open_store

#: Paths whose bodies are not JSON and may be large: uploads, and the training API's protobuf batches (the tinker
#: SDK splits a forward_backward into chunks of at most 5 MB).
UPLOAD_PATHS = frozenset({"/v1/files", "/api/v1/forward_backward"})


def build_services(settings: Settings, *, extras: dict[str, Any] | None = None) -> ApiServices:
    # A connection for every request thread (plus the few background users): no connection churn.
    db = Database(settings.database.url, pool_size=settings.api.threads + 2, max_overflow=8,
                  statement_timeout_seconds=settings.database.statement_timeout_seconds)
    # Two tries per S3 request: one survives a dropped keep-alive connection, and a stalled store costs a
    # request at most twice the read timeout before its 503 (which the SDKs retry with their own backoff).
    store = open_store(settings.storage.artifact_uri, settings.storage, attempts=2)
    registry = BaseModelRegistry(settings.models.sources())
    evals = KnowledgeEvalService(db, store, registry, max_attempts=settings.work.max_attempts,
                                 external_judge=settings.evals.judge_base_url is not None)
    files = FileService(db, store, max_upload_bytes=settings.api.max_upload_bytes)
    models = ModelService(db, store, registry)
    loader = BaseModelLoader(registry, settings.models.cache_path, hf_offline=settings.models.hf_offline,
                             open_store=lambda uri: open_store(uri, settings.storage))
    return ApiServices(
        settings=settings, db=db, store=store, registry=registry, files=files,
        stored_completions=StoredCompletionService(db, files, settings.stored_completions),
        jobs=JobService(db, registry, max_active_jobs=settings.api.max_active_jobs_per_project,
                        max_attempts=settings.work.max_attempts, knowledge_evals=evals,
                        integrations=settings.tracking.configured_integrations(), graders=settings.graders),
        models=models,
        webhooks=WebhookService(db, allow_private_networks=settings.webhooks.allow_private_networks),
        knowledge_evals=evals,
        graders=GraderService(settings.graders),
        training_api=TrainingApiService(db, store, registry, models, settings.training_api,
                                        max_rank=settings.serving.max_lora_rank,
                                        tokenizer_location=loader.tokenizer_location),
        adapter_operations=AdapterOperationService(
            db, store, registry, loader,
            max_attempts=settings.work.max_attempts, max_rank=settings.serving.max_lora_rank),
        executor=ThreadPoolExecutor(max_workers=settings.api.threads, thread_name_prefix="ftaas-api"),
        extras=extras or {},
        rate_limits=request_limiter(settings),
    )


def request_limiter(settings: Settings) -> RequestLimiter | None:
    """Counts in Redis when the broker is Redis (several API replicas share the counts), else in memory."""
    broker = settings.broker.url
    storage_uri = broker if broker.startswith(("redis://", "rediss://")) else "memory://"
    return RequestLimiter(settings.rate_limits, storage_uri) if settings.rate_limits.enabled else None


def create_app(settings: Settings, *, services: ApiServices | None = None,
               extra_routers: Iterable[APIRouter] = ()) -> FastAPI:
    services = services or build_services(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Everything imported and built so far lives as long as the process. Freezing it keeps the garbage
        # collector from re-scanning ~120k long-lived objects in every full collection (57 ms each,
        # measured), which showed up as the p99 latency of ordinary requests (docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        yield
        services.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        lifespan=lifespan,
        title="ftaas",
        version=contracts.__version__,
        summary="Self-hosted, OpenAI-compatible fine-tuning: files, fine-tuning jobs, models.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.services = services
    app.state.draining = False
    errors.install(app)
    for router in (health_router, files_router, jobs_router, models_router, knowledge_evals_router,
                   adapter_operations_router, webhooks_router, graders_router, stored_completions_router,
                   console_router, training_api_router, *extra_routers):
        app.include_router(router)
    # Added last = outermost: the request id wraps everything, including 413s from the body limit; the body
    # limit runs before the check for unstorable text, which reads JSON bodies whole.
    app.add_middleware(StorableTextMiddleware, skip_paths=UPLOAD_PATHS)
    app.add_middleware(BodyLimitMiddleware, json_limit=settings.api.max_json_body_bytes,
                       upload_limit=settings.api.max_upload_bytes, upload_paths=UPLOAD_PATHS)
    app.add_middleware(RequestContextMiddleware)
    return app
