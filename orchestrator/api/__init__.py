"""The orchestrator's REST API (FastAPI): jobs, servers, inventory, pairings, transfer runs,
reconciliation, CSV logs and cutover status.

``create_app(settings)`` builds the application; ``sms serve`` runs it with uvicorn on
``settings.api_host:api_port``. Every endpoint but ``GET /api/health`` needs the bearer
token (``orchestrator.api.auth``); the OpenAPI schema is served at
``GET /api/openapi.json``, behind the token too.

The API is a thin layer over the services (``orchestrator.jobs``,
``orchestrator.inventory.service``, ``orchestrator.transfer``): it validates input, calls
them, and turns their refusals into 4xx answers that say what to fix. It must never
return, log or echo a credential: passwords are write-only fields, and validation errors
never repeat the request's input.
"""

__all__ = ["create_app"]


def __getattr__(name: str):
    """``create_app``, imported on first use: ``sms serve`` lives in this package
    (``orchestrator.api.cli``), and every ``sms`` call must not pay for loading FastAPI."""
    if name == "create_app":
        from orchestrator.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
