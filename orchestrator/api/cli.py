"""``sms serve``: run the REST API with uvicorn on ``settings.api_host:api_port``.

On first start without ``SMS_API_TOKEN`` it writes a random token to
``STATE_DIR/api.token`` (mode 0600) and prints the file's path, never the token. On the
embedded SQLite database it creates or upgrades the schema first (as ``sms transfer``
does); on PostgreSQL the operator runs ``sms db upgrade`` before starting a new version.
The API process also runs the lease reaper unless ``--no-reaper``. Exit code 2 when it
cannot start. Nothing here prints a credential.
"""

from __future__ import annotations

import ipaddress

import typer
from rich.console import Console

err_console = Console(stderr=True)
FAILURE = 2  # orchestrator.cli.ExitCode.FAILURE (that module imports this one)


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback IP addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(host: str = typer.Option(None, help="Listen address (default: SMS_API_HOST, 127.0.0.1)."),
          port: int = typer.Option(None, help="Listen port (default: SMS_API_PORT, 8080)."),
          reaper: bool = typer.Option(True, "--reaper/--no-reaper",
                                      help="Also run the lease reaper in this process."),
          log_level: str = typer.Option("info", help="uvicorn log level.")):
    """Run the REST API (bearer token required on every endpoint but /api/health)."""
    import uvicorn

    from common.settings import get_settings
    from orchestrator.api.app import create_app
    from orchestrator.api.auth import ApiConfigurationError, resolve_api_token

    settings = get_settings()
    host = host or settings.api_host
    port = port or settings.api_port
    if settings.database_url.startswith("sqlite"):
        from orchestrator.database import upgrade_to_head

        settings.ensure_state_dir()
        upgrade_to_head(settings.database_url)
    try:
        _token, source = resolve_api_token(settings, create=True)
        app = create_app(settings, reaper=reaper)
    except ApiConfigurationError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(FAILURE)
    where = "SMS_API_TOKEN" if source == "SMS_API_TOKEN" else f"the token file {source}"
    # Never wrapped: a log reader must be able to copy the token file's path whole.
    err_console.print(f"API on http://{host}:{port}/api (bearer token from {where})", highlight=False,
                      soft_wrap=True)
    if not is_loopback(host):
        err_console.print("[yellow]warning:[/yellow] plain HTTP on a non-loopback address: put a TLS "
                          "reverse proxy in front (docs/operations.md)", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
