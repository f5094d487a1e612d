"""Liveness and readiness probes (no authentication).

Liveness touches no dependency. Readiness names each failed dependency and what kind of failure it is,
never its details (hosts, ports, buckets, keys): those go to the log, since the probe answers anyone.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.dependencies import Services
from contracts.errors import FTaaSError
from db.migrate import is_at_head

log = logging.getLogger(__name__)

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> dict:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request, services: Services) -> JSONResponse:
    """Ready to take traffic: not draining; database reachable and migrated; artifact store and broker
    reachable. 503 with the failing checks otherwise."""
    checks: dict[str, str] = {}
    if getattr(request.app.state, "draining", False):
        checks["draining"] = "shutting down"

    def database() -> None:
        with services.db.read() as session:
            session.execute(text("SELECT 1"))
        if not is_at_head(services.db):
            raise RuntimeError("schema is not at the latest migration; run `ftaas migrate`")

    probes = {"database": database, "artifact_store": services.store.check_available,
              **services.extras.get("readiness_checks", {})}
    for name, probe in probes.items():
        try:
            await services.run_blocking(probe)
            checks[name] = "ok"
        except Exception as exc:  # a probe reports, it never raises
            log.warning("readiness: %s failed: %s", name, exc)
            checks[name] = f"failed: {exc.code}" if isinstance(exc, FTaaSError) else f"failed: {type(exc).__name__}"
    healthy = all(value == "ok" for value in checks.values())
    return JSONResponse({"status": "ok" if healthy else "unavailable", "checks": checks},
                        status_code=200 if healthy else 503)
