"""``sms flower``: Flower, the Celery monitor, on the same Celery configuration, always
behind HTTP basic authentication.

The credentials come from settings (``SMS_FLOWER_USER``, ``SMS_FLOWER_PASSWORD``) and
reach Flower through the ``FLOWER_BASIC_AUTH`` environment variable of its own process,
never through its command line, so they never show in a process list. Without both,
Flower does not start. Flower runs inside this process with the app from
``common.celery_app.create_celery_app``, so it watches the same broker and queues as the
workers.

This module must never print or log the credentials.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from common.settings import Settings

err_console = Console(stderr=True)
FAILURE = 2  # orchestrator.cli.ExitCode.FAILURE (that module imports this one)


class FlowerConfigurationError(RuntimeError):
    """Flower cannot start as configured; the message says what to set."""


def flower_basic_auth(settings: Settings) -> str:
    """The ``user:password`` value of FLOWER_BASIC_AUTH; refuses missing or unusable credentials."""
    user, password = settings.flower_user, settings.flower_password
    if not user or not password:
        raise FlowerConfigurationError(
            "Flower needs basic authentication: set SMS_FLOWER_USER and SMS_FLOWER_PASSWORD "
            "(in the environment or the service's EnvironmentFile)")
    if ":" in user or "," in user or "," in password:
        raise FlowerConfigurationError(
            "SMS_FLOWER_USER may not contain ':' or ',' and SMS_FLOWER_PASSWORD may not contain ','"
            " (Flower separates credentials with them)")
    return f"{user}:{password}"


def flower_argv(host: str, port: int) -> list[str]:
    """The celery command line that starts Flower (no credential in it)."""
    return ["flower", f"--address={host}", f"--port={port}"]


def run_flower(settings: Settings, host: str, port: int) -> None:
    """Run Flower until it is stopped, with basic auth from ``settings``."""
    from common.celery_app import create_celery_app

    os.environ["FLOWER_BASIC_AUTH"] = flower_basic_auth(settings)
    create_celery_app(settings).start(argv=flower_argv(host, port))


def flower_command(host: str = typer.Option(None, help="Listen address (default: SMS_FLOWER_HOST, 127.0.0.1)."),
                   port: int = typer.Option(None, help="Listen port (default: SMS_FLOWER_PORT, 5555).")):
    """Run Flower on the same broker as the workers, with basic authentication required."""
    from common.settings import get_settings

    settings = get_settings()
    try:
        flower_basic_auth(settings)
    except FlowerConfigurationError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(FAILURE)
    if settings.broker_is_embedded:
        err_console.print("[yellow]warning:[/yellow] the embedded SQLite broker has no remote control: "
                          "Flower shows workers and queues only with Redis (SMS_BROKER_URL)", highlight=False)
    run_flower(settings, host or settings.flower_host, port or settings.flower_port)
