"""Request-scoped dependencies: the services container and the authenticated principal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from db import projects
from db.projects import Principal
from db.session import Database
from ftaas.errors import AuthenticationFailed
from ftaas.settings import Settings

if TYPE_CHECKING:
    from api.files.service import FileService
    from api.fine_tuning.service import JobService
    from api.models.service import ModelService
    from basemodels.registry import BaseModelRegistry
    from storage import ArtifactStore


@dataclass
class ApiServices:
    """Everything the routes need, built once per process by `api.app.create_app`."""

    settings: Settings
    db: Database
    store: ArtifactStore
    registry: BaseModelRegistry
    files: FileService
    jobs: JobService
    models: ModelService
    #: Optional extras mounted by `ftaas up` (e.g. the in-process inference engine).
    extras: dict[str, Any]


def get_services(request: Request) -> ApiServices:
    return request.app.state.services


Services = Annotated[ApiServices, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False, description="An ftaas API key (`ftaas keys create`).")


def get_principal(request: Request, services: Services,
                  _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    # The HTTPBearer dependency documents the scheme in OpenAPI; the header is parsed here so that a wrong
    # scheme is reported as such rather than as a missing key.
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it in the Authorization header as 'Bearer <key>'.",
            code="missing_api_key")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("Malformed Authorization header; expected 'Bearer <key>'.", code="invalid_api_key")
    with services.db.read() as session:
        principal = projects.authenticate(session, token.strip())
    if principal is None:
        raise AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
