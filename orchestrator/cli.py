"""The ``sms`` command line: every operation an administrator or a script needs.

Human output by default (Rich), ``--json`` for scripts. Exit codes follow what robocopy
users expect: 0 success, 1 completed with errors, 2 and above failure. The CLI never
prints a credential.

Every ``sms`` call builds the whole command tree, so this module and the command-line
modules it assembles import only Typer, Rich and light modules at the top; the machinery
a command needs (settings, the database, planning, cutover, the API, Celery) is imported
inside that command's function.
"""

from __future__ import annotations

import json
import os
import re
import sys
from enum import IntEnum

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.transfer.cli import transfer_app
from orchestrator.cutover.cli import cutover_app
from orchestrator.jobs_cli import job_app, server_app
from orchestrator.inventory.cli import inventory_app, worker_app
from orchestrator.api.cli import serve
from orchestrator.flower import flower_command

app = typer.Typer(help="Storage migration service: inventory, transfer and cut over file servers.",
                  no_args_is_help=True)
db_app = typer.Typer(help="Job database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(transfer_app, name="transfer")
app.add_typer(cutover_app, name="cutover")
app.add_typer(job_app, name="job")
app.add_typer(server_app, name="server")
app.add_typer(inventory_app, name="inventory")
app.add_typer(worker_app, name="orchestrator-worker")
app.command("serve")(serve)
app.command("flower")(flower_command)
console = Console()

# Commands that must work before (or without) a job database.
COMMANDS_WITHOUT_DATABASE = {"config", "db", "worker", "flower"}

SECRET_SETTINGS = {"secret_key", "api_token", "flower_password"}


class ExitCode(IntEnum):
    """Process exit codes, in robocopy's spirit."""

    SUCCESS = 0
    COMPLETED_WITH_ERRORS = 1
    FAILURE = 2


@app.callback()
def prepare_database(ctx: typer.Context) -> None:
    """Before a command that uses the job database, make sure its schema is current."""
    if ctx.invoked_subcommand in COMMANDS_WITHOUT_DATABASE or ctx.resilient_parsing:
        return
    from common.settings import get_settings
    from orchestrator.database import ensure_schema

    settings = get_settings()
    if settings.database_url.startswith("sqlite"):
        settings.ensure_state_dir()
    ensure_schema(settings.database_url)


def main() -> None:
    """Entry point of ``sms``: an unexpected error is one clear line and exit code 2
    (failure), never a traceback with exit code 1, which means "completed with errors"."""
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - the last line of defence of a CLI
        Console(stderr=True).print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        sys.exit(ExitCode.FAILURE)


def mask_url_password(url: str) -> str:
    """Replace the password of a URL such as postgresql://user:pw@host/db with ***."""
    return re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", url)


@app.command("config")
def show_config(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Show the effective settings and the SMS_* variable that sets each (secrets masked)."""
    from common.settings import Settings, get_settings

    settings = get_settings()
    rows = []
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if name in SECRET_SETTINGS:
            value = "(set)" if value else "(not set)"
        elif name.endswith("_url"):
            value = mask_url_password(str(value))
        rows.append({"setting": name, "variable": f"SMS_{name.upper()}", "value": str(value),
                     "description": field.description or ""})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("variable", "value", "description")
    for row in rows:
        table.add_row(row["variable"], row["value"], row["description"])
    console.print(table)


@db_app.command("upgrade")
def db_upgrade():
    """Create or upgrade the job database schema to the newest version (Alembic)."""
    from common.settings import get_settings
    from orchestrator.database import upgrade_to_head

    settings = get_settings()
    settings.ensure_state_dir()
    upgrade_to_head(settings.database_url)
    console.print("database schema is up to date")


@app.command("worker", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run_worker(ctx: typer.Context,
               destination: str = typer.Option(..., help="Destination server whose queue to serve."),
               concurrency: int = typer.Option(0, help="Prefork processes (default: settings).")):
    """Start a proxy worker for one destination (same as the ``sms-worker`` command)."""
    args = [sys.executable, "-m", "proxy_worker.main", "--destination", destination]
    if concurrency:
        args += ["--concurrency", str(concurrency)]
    os.execv(sys.executable, args + list(ctx.args))


if __name__ == "__main__":
    main()
