"""``sms job ...`` and ``sms server ...``: create jobs, add servers, read them back.

Human output with Rich, ``--json`` for scripts. Passwords never travel in argv: the CLI
reads each from a hidden prompt, from standard input (``--password-stdin``, one line) or
from a named environment variable (``--password-env VAR``), and hands it straight to
``orchestrator.jobs``, which stores it encrypted. Nothing here ever prints a secret.
Exit codes as in ``orchestrator.cli``: 0 success, 2 failure.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from sqlalchemy import select

# The option types of ``sms server add``: Typer needs them to build the command tree.
from common.models import Event, ServerKind, ServerRole

FAILURE = 2  # orchestrator.cli.ExitCode.FAILURE (not imported: that module imports this one)

job_app = typer.Typer(help="Migration jobs: create, list, show.", no_args_is_help=True)
server_app = typer.Typer(help="Source and destination servers of a job.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

JSON_OPTION = typer.Option(False, "--json", help="Machine-readable output.")


def fail(message: str) -> None:
    """Print an error for the administrator and exit with the failure code."""
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(FAILURE)


def plain(*values: Any) -> list[Text]:
    """Table cells shown as they are: a server's text is never read as Rich markup."""
    return [Text("" if value is None else str(value)) for value in values]


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON."""
    print(json.dumps(data, indent=2, default=str))


def read_secret(what: str, *, from_stdin: bool, env_var: str | None, prompt: bool) -> str | None:
    """A secret from standard input, a named environment variable or a hidden prompt."""
    if from_stdin and env_var:
        fail(f"give the {what} either on standard input or in an environment variable, not both")
    if from_stdin:
        line = sys.stdin.readline()
        secret = line[:-1] if line.endswith("\n") else line
        if not secret:
            fail(f"no {what} on standard input")
        return secret
    if env_var:
        secret = os.environ.get(env_var)
        if not secret:
            fail(f"environment variable {env_var} (the {what}) is not set or empty")
        return secret
    if prompt:
        return typer.prompt(what.capitalize(), hide_input=True)
    return None


def events_json(session, job_id: int, limit: int = 20) -> list[dict[str, Any]]:
    """The job's latest events, newest last."""
    events = session.scalars(
        select(Event).where(Event.job_id == job_id).order_by(Event.id.desc()).limit(limit)
    ).all()
    return [{"at": e.at.isoformat() if e.at else None, "level": e.level.value, "kind": e.kind,
             "server_id": e.server_id, "message": e.message} for e in reversed(events)]


# --- sms job ---------------------------------------------------------------------------

@job_app.command("create")
def job_create(name: str = typer.Argument(..., help="Job name (unique)."),
               description: str = typer.Option("", help="Free text."),
               as_json: bool = JSON_OPTION):
    """Create a migration job."""
    from common.db import session_scope
    from orchestrator.jobs import JobError, create_job, job_summary

    try:
        with session_scope() as session:
            data = job_summary(session, create_job(session, name, description))
    except JobError as exc:
        fail(str(exc))
    if as_json:
        emit_json(data)
    else:
        console.print(f"job [bold]{escape(data['name'])}[/bold] created (id {data['id']})", highlight=False)


@job_app.command("list")
def job_list(as_json: bool = JSON_OPTION):
    """List the jobs."""
    from common.db import session_scope
    from orchestrator.jobs import job_summary, list_jobs

    with session_scope() as session:
        data = [job_summary(session, job) for job in list_jobs(session)]
    if as_json:
        emit_json(data)
        return
    table = Table("id", "name", "state", "servers", "description")
    for job in data:
        table.add_row(*plain(str(job["id"]), job["name"], job["state"], str(len(job["servers"])),
                      job["description"]))
    console.print(table)


@job_app.command("show")
def job_show(job: str = typer.Argument(..., help="Job name or id."), as_json: bool = JSON_OPTION):
    """Show a job, its servers and its latest events."""
    from common.db import session_scope
    from orchestrator.jobs import JobError, get_job, job_summary

    try:
        with session_scope() as session:
            record = get_job(session, job)
            data = job_summary(session, record)
            data["events"] = events_json(session, record.id)
    except JobError as exc:
        fail(str(exc))
    if as_json:
        emit_json(data)
        return
    console.print(f"[bold]{escape(data['name'])}[/bold] (id {data['id']}), state {data['state']}",
                  highlight=False)
    if data["description"]:
        console.print(data["description"], highlight=False)
    print_servers(data["servers"])
    table = Table("at", "level", "kind", "message", title="latest events")
    for event in data["events"]:
        table.add_row(*plain(event["at"] or "", event["level"], event["kind"], event["message"]))
    console.print(table)


# --- sms server --------------------------------------------------------------------------

def print_servers(servers: list[dict[str, Any]]) -> None:
    """A table of servers (no secrets: summaries never hold any)."""
    table = Table("id", "name", "role", "kind", "SMB address", "account", "management")
    for server in servers:
        management = server["management"]
        if server["kind"] == "samba":
            how = (f"ssh {management.get('ssh_user')}@{management.get('ssh_host') or server['address']}"
                   f":{management.get('ssh_port')}")
        elif server["kind"] == "windows":
            scheme = "https" if management.get("winrm_https") else "http+encryption"
            how = f"winrm {management.get('winrm_transport')} {scheme}"
        else:
            how = "none (SMB only)"
        table.add_row(*plain(str(server["id"]), server["name"], server["role"], server["kind"],
                      f"{server['address']}:{server['port']}", server["username"], how))
    console.print(table)


@server_app.command("add")
def server_add(
    job: str = typer.Argument(..., help="Job name or id."),
    name: str = typer.Argument(..., help="Server name within the job."),
    role: ServerRole = typer.Option(ServerRole.SOURCE, help="source or destination."),
    kind: ServerKind = typer.Option(..., help="windows, samba or smb-only."),
    address: str = typer.Option(..., help="SMB address (name or IP)."),
    port: int = typer.Option(445, help="SMB port."),
    user: str = typer.Option(..., "--user", help="SMB account (DOMAIN\\user or user)."),
    password_stdin: bool = typer.Option(False, "--password-stdin",
        help="Read the SMB password from standard input."),
    password_env: str | None = typer.Option(None, "--password-env", metavar="VAR",
        help="Read the SMB password from this environment variable."),
    ssh_host: str | None = typer.Option(None, help="Samba: SSH host (default: the SMB address)."),
    ssh_port: int = typer.Option(22, help="Samba: SSH port."),
    ssh_user: str | None = typer.Option(None, help="Samba: SSH account."),
    ssh_key: str | None = typer.Option(None, help="Samba: private key file for SSH."),
    ssh_password_stdin: bool = typer.Option(False, "--ssh-password-stdin",
        help="Samba: read the SSH password from standard input."),
    ssh_password_env: str | None = typer.Option(None, "--ssh-password-env", metavar="VAR",
        help="Samba: read the SSH password from this environment variable."),
    known_hosts: str | None = typer.Option(None,
        help="Samba: known_hosts file holding the server's SSH host key."),
    smb_conf: str | None = typer.Option(None,
        help="Samba: smb.conf to read (default: the distribution's)."),
    winrm_transport: str = typer.Option("ntlm", help="Windows: ntlm, kerberos or credssp."),
    winrm_http: bool = typer.Option(False, "--winrm-http",
        help="Windows: HTTP with WinRM message encryption instead of HTTPS."),
    winrm_port: int | None = typer.Option(None,
        help="Windows: WinRM port (default 5986, or 5985 with --winrm-http)."),
    winrm_no_verify: bool = typer.Option(False, "--winrm-no-verify",
        help="Windows: do not check the HTTPS certificate."),
    winrm_ca_bundle: str | None = typer.Option(None,
        help="Windows: CA bundle to check the certificate against."),
    winrm_host: str | None = typer.Option(None, help="Windows: WinRM host (default: the SMB address)."),
    winrm_user: str | None = typer.Option(None,
        help="Windows: WinRM account (default: the SMB account)."),
    winrm_password_env: str | None = typer.Option(None, "--winrm-password-env", metavar="VAR",
        help="Windows: WinRM password from this variable (default: the SMB password)."),
    as_json: bool = JSON_OPTION,
):
    """Add a source or destination server to a job (passwords are stored encrypted)."""
    from common.db import session_scope
    from orchestrator.jobs import (
        JobError,
        SambaManagement,
        WindowsManagement,
        add_server,
        get_job,
        server_summary,
    )

    if password_stdin and ssh_password_stdin:
        fail("only one password can come from standard input; use --ssh-password-env for the other")
    samba = windows = None
    if kind is ServerKind.SAMBA:
        if not ssh_user or not known_hosts:
            fail("a Samba server needs --ssh-user and --known-hosts (and --ssh-key or an SSH password)")
    password = read_secret("SMB password", from_stdin=password_stdin, env_var=password_env, prompt=True)
    if kind is ServerKind.SAMBA:
        ssh_password = read_secret("SSH password", from_stdin=ssh_password_stdin, env_var=ssh_password_env,
                                   prompt=not ssh_key)
        samba = SambaManagement(ssh_user=ssh_user, known_hosts=known_hosts, ssh_host=ssh_host,
                                ssh_port=ssh_port, key_file=ssh_key, password=ssh_password,
                                smb_conf=smb_conf)
    elif kind is ServerKind.WINDOWS:
        windows = WindowsManagement(
            transport=winrm_transport, use_https=not winrm_http, port=winrm_port,
            verify_certificate=not winrm_no_verify, ca_bundle=winrm_ca_bundle, host=winrm_host,
            user=winrm_user,
            password=read_secret("WinRM password", from_stdin=False, env_var=winrm_password_env,
                                 prompt=False))
    try:
        with session_scope() as session:
            server = add_server(session, get_job(session, job), name=name, role=role, kind=kind,
                                address=address, port=port, username=user, password=password,
                                samba=samba, windows=windows)
            data = server_summary(server)
    except JobError as exc:
        fail(str(exc))
    if as_json:
        emit_json(data)
    else:
        console.print(f"{data['role']} server [bold]{escape(data['name'])}[/bold] ({data['kind']}) added "
                      f"to job {job} (id {data['id']}); password stored encrypted", highlight=False)


@server_app.command("list")
def server_list(job: str = typer.Argument(..., help="Job name or id."), as_json: bool = JSON_OPTION):
    """List a job's servers."""
    from common.db import session_scope
    from orchestrator.jobs import JobError, get_job, list_servers, server_summary

    try:
        with session_scope() as session:
            data = [server_summary(s) for s in list_servers(session, get_job(session, job))]
    except JobError as exc:
        fail(str(exc))
    if as_json:
        emit_json(data)
    else:
        print_servers(data)


@server_app.command("show")
def server_show(job: str = typer.Argument(..., help="Job name or id."),
                server: str = typer.Argument(..., help="Server name or id."),
                as_json: bool = JSON_OPTION):
    """Show one server and how it is reached (secrets only as 'stored')."""
    from common.db import session_scope
    from orchestrator.jobs import JobError, get_job, get_server, server_summary

    try:
        with session_scope() as session:
            data = server_summary(get_server(session, get_job(session, job), server))
    except JobError as exc:
        fail(str(exc))
    if as_json:
        emit_json(data)
        return
    table = Table("field", "value", show_header=False)
    for key, value in data.items():
        if key != "management":
            table.add_row(*plain(key, str(value)))
    for key, value in data["management"].items():
        table.add_row(*plain(f"management.{key}", str(value)))
    console.print(table)
