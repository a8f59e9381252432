"""The API application factory: settings in, a FastAPI app out.

``create_app(settings)`` resolves the bearer token (``orchestrator.api.auth``; the app
refuses to be built without one), puts every router behind it except ``GET /api/health``,
serves the OpenAPI schema at ``GET /api/openapi.json`` (behind the token as well; there is
no unauthenticated docs page), serves the web UI's static files (``orchestrator.ui``: no
data in them; the page calls this API with the token), and turns validation errors into 422 answers whose message
says which field is wrong and what is allowed, without ever repeating the request's input
(which may hold a password). With ``reaper=True`` the app also runs the lease reaper
(``orchestrator.leases.run_reaper``) in a thread for as long as it serves: that is what
``sms serve`` does, so one orchestrator process re-dispatches lost batches.

This module must never log or return the token or any credential.
"""

from __future__ import annotations

import functools
import logging
import threading
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from common.celery_app import create_celery_app
from common.db import session_scope
from common.settings import Settings, get_settings
from orchestrator.api import schemas
from orchestrator.api.auth import bearer_checker, resolve_api_token
from orchestrator.api.routes import router
from orchestrator.api.cutover import router as cutover_router
from orchestrator.ui import mount_ui

logger = logging.getLogger(__name__)

API_VERSION = "1"


def _location(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "request"


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for error in errors:
        message = error.get("msg", "invalid")
        if error.get("type") == "missing":
            message = "field required"
        elif error.get("type") == "extra_forbidden":
            message = "unknown field (not allowed)"
        parts.append(f"{_location(error.get('loc', ()))}: {message}")
    return "invalid request: " + "; ".join(parts)


async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """A 422 that lists each wrong field with what is allowed; the input is never echoed."""
    errors = [{"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}
              for error in exc.errors()]
    return JSONResponse(status_code=422,
                        content={"detail": _validation_message(exc.errors()), "errors": errors})


async def database_unreachable(_request: Request, exc: OperationalError) -> JSONResponse:
    """A 503 when the job database cannot be reached (no URL, no password in the answer)."""
    logger.error("job database error: %s", type(exc.orig).__name__ if exc.orig else type(exc).__name__)
    return JSONResponse(status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                        content={"detail": "the job database is unreachable or not upgraded: "
                                           "check SMS_DATABASE_URL and run `sms db upgrade`"})


def create_app(settings: Settings | None = None, *, reaper: bool = False) -> FastAPI:
    """The REST API for ``settings`` (default: this process's settings).

    Raises ``orchestrator.api.auth.ApiConfigurationError`` when no API token is configured.
    """
    settings = settings or get_settings()
    token, _source = resolve_api_token(settings)
    require_token = bearer_checker(token)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        """Run the lease reaper thread (when asked) for as long as the app serves."""
        stop = threading.Event()
        thread = None
        if reaper:
            from orchestrator.leases import run_reaper

            thread = threading.Thread(target=run_reaper, args=(app.state.celery(), stop),
                                      kwargs={"url": settings.database_url}, name="lease-reaper", daemon=True)
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=30)

    app = FastAPI(title="Storage migration service", version=API_VERSION, lifespan=lifespan,
                  openapi_url=None, docs_url=None, redoc_url=None,
                  description="Jobs, servers, inventory, pairings, transfer runs, reconciliation, "
                              "CSV logs and cutover status. Every endpoint but /api/health needs "
                              "'Authorization: Bearer <token>'.")
    app.state.settings = settings
    app.state.celery = functools.cache(lambda: create_celery_app(settings))
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(OperationalError, database_unreachable)

    @app.get("/api/health", response_model=schemas.HealthOut, tags=["health"],
             summary="Liveness and database reachability (no token needed)")
    def health():
        """Liveness and database reachability (no token needed)."""
        try:
            with session_scope(settings.database_url) as session:
                session.execute(text("SELECT 1"))
        except OperationalError:
            return JSONResponse(status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                                content={"status": "degraded", "database": "unreachable"})
        return {"status": "ok", "database": "ok"}

    @app.get("/api/openapi.json", tags=["health"], dependencies=[Depends(require_token)],
             summary="The OpenAPI schema of this API")
    def openapi_schema():
        """The OpenAPI schema of this API."""
        return app.openapi()

    app.include_router(router, dependencies=[Depends(require_token)])
    app.include_router(cutover_router, dependencies=[Depends(require_token)])
    mount_ui(app)
    return app
