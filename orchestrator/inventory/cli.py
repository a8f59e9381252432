"""``sms inventory run|resume|show`` and ``sms orchestrator-worker``.

``sms inventory run JOB`` inventories every source server of the job and starts the file
scans; with ``--wait`` it waits for the scans to finish. The scans run on orchestrator
workers (``sms orchestrator-worker``); on the embedded defaults ``--wait`` starts one
itself and stops it, by pid, at the end. ``sms inventory show JOB`` prints what the
inventory stored: servers, shares with their properties, volumes, users and groups, file
counts, bytes and errors. ``sms inventory resume JOB`` publishes again the folders that
unfinished scans still wait for (after a lost message). ``--json`` for scripts. Exit
codes: 0 success, 1 completed with errors, 2 failure (as ``orchestrator.cli.ExitCode``).
Nothing here prints a secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator.jobs_cli import JSON_OPTION, emit_json, fail, plain

if TYPE_CHECKING:
    from orchestrator.worker import LocalWorker

SUCCESS, COMPLETED_WITH_ERRORS, FAILURE = 0, 1, 2  # orchestrator.cli.ExitCode

inventory_app = typer.Typer(help="Inventory source servers: facts, shares, users, files.",
                            no_args_is_help=True)
worker_app = typer.Typer(help="Run a worker for the orchestrator's own queue (inventory scans).",
                         invoke_without_command=True)
console = Console()


@worker_app.callback()
def orchestrator_worker(concurrency: int = typer.Option(0, help="Prefork processes (default: settings)."),
                        loglevel: str = typer.Option("INFO", help="Celery log level.")):
    """Serve the orchestrator queue (the inventory's directory scan tasks) until stopped."""
    from orchestrator.worker import main as worker_main

    worker_main((["--concurrency", str(concurrency)] if concurrency else []) + ["--loglevel", loglevel])


def wait_with_worker(share_ids: list[int], timeout: float, worker: LocalWorker | None) -> tuple[bool, str | None]:
    """Wait for the scans of ``share_ids`` (with the worker this command started, if any):
    (finished, why the worker is gone or None). A worker that cannot start fails the command."""
    from orchestrator.inventory.service import wait_for_scans
    from orchestrator.worker import WorkerStartError

    if worker is not None:
        try:
            worker.wait_ready()
        except WorkerStartError as exc:
            fail(str(exc))
    finished = wait_for_scans(share_ids, timeout=timeout, alive=worker.alive if worker is not None else None)
    gone = worker.gone_message() if not finished and worker is not None and not worker.alive() else None
    return finished, gone


@inventory_app.command("run")
def inventory_run(
    job: str = typer.Argument(..., help="Job name or id."),
    wait: bool = typer.Option(False, "--wait", help="Wait until every share's file scan has finished."),
    timeout: float = typer.Option(3600.0, help="With --wait: give up after this many seconds."),
    include_admin_shares: bool = typer.Option(False, "--include-admin-shares",
                                              help="Also inventory administrative shares (names ending in $)."),
    scan_excluded_folders: bool = typer.Option(
        False, "--scan-excluded-folders",
        help="Also scan Windows, Program Files, Users, System Volume Information, $Recycle.bin, pagefile.sys."),
    no_files: bool = typer.Option(False, "--no-files", help="Servers and shares only: no file scan."),
    restart: bool = typer.Option(False, "--restart", help="Restart share scans that are still running."),
    start_worker: bool | None = typer.Option(
        None, "--start-worker/--no-start-worker",
        help="Start an orchestrator worker for the scans and stop it at the end "
             "(default: with --wait on the embedded broker)."),
    concurrency: int = typer.Option(0, help="Processes of a worker started here (default: settings)."),
    inline: bool = typer.Option(False, "--inline",
                                help="Scan the files in this process, one folder after another (no worker)."),
    as_json: bool = JSON_OPTION,
):
    """Inventory a job's source servers and scan their shares' files."""
    from common.db import session_scope
    from common.settings import get_settings
    from orchestrator.inventory.service import InventoryOptions, inventory_view, run_inventory
    from orchestrator.inventory.tasks import run_scans_inline
    from orchestrator.jobs import JobError
    from orchestrator.worker import start_local_worker, stop_grace

    options = InventoryOptions(include_admin_shares=include_admin_shares,
                               skip_excluded_folders=not scan_excluded_folders,
                               scan_files=not no_files, restart_running_scans=restart)
    wait = wait or inline  # an inline scan has finished when run_inventory returns
    if start_worker is None:
        start_worker = wait and get_settings().broker_is_embedded and options.scan_files and not inline
    worker = start_local_worker(concurrency or None) if start_worker else None
    ended = False  # the scans the worker serves have all finished
    try:
        try:
            report = run_inventory(job, options, publish=run_scans_inline if inline else None)
        except JobError as exc:
            fail(str(exc))
        finished, worker_gone = True, None
        if wait and report.scan_share_ids:
            finished, worker_gone = wait_with_worker(report.scan_share_ids, timeout, worker)
        ended = finished
    finally:
        if worker is not None:
            worker.stop(stop_grace(ended))
    with session_scope() as session:
        view = inventory_view(session, report.job_id)
    scan_errors = sum(share["scan"]["errors"] for server in view["servers"] for share in server["shares"]
                      if share["id"] in report.scan_share_ids)
    if as_json:
        emit_json({**report.to_dict(), "waited": wait, "finished": finished, "worker_gone": worker_gone,
                   "inventory": view})
    else:
        for server in report.servers:
            state = "[green]ok[/green]" if not server.errors else f"[yellow]{len(server.errors)} errors[/yellow]"
            console.print(f"[bold]{escape(server.name)}[/bold]: {state}; shares: {escape(', '.join(server.shares)) or 'none'}; "
                          f"{server.principals} local users and groups", highlight=False)
            for message in server.errors.values():
                console.print(f"  [red]error:[/red] {escape(message)}", highlight=False)
            for name in server.scans_not_restarted:
                console.print(f"  share {escape(repr(name))}: a scan is still running (use --restart)", highlight=False)
        if wait:
            print_share_table(view)
            if worker_gone:
                console.print(f"[red]the file scans did not finish: {escape(worker_gone)}[/red]", highlight=False)
            elif not finished:
                console.print("[red]the file scans did not finish in time[/red]")
        elif report.scan_share_ids:
            console.print(f"file scans of {len(report.scan_share_ids)} shares queued for the orchestrator "
                          f"workers (`sms orchestrator-worker`); `sms inventory show {escape(report.job_name)}` "
                          "follows them", highlight=False)
    if not finished:
        raise typer.Exit(FAILURE)
    if report.error_count or scan_errors:
        raise typer.Exit(COMPLETED_WITH_ERRORS)


@inventory_app.command("resume")
def inventory_resume(
    job: str = typer.Argument(..., help="Job name or id."),
    wait: bool = typer.Option(False, "--wait", help="Wait until the resumed scans have finished."),
    timeout: float = typer.Option(3600.0, help="With --wait: give up after this many seconds."),
    start_worker: bool | None = typer.Option(
        None, "--start-worker/--no-start-worker",
        help="Start an orchestrator worker and stop it at the end (default: with --wait on the embedded broker)."),
    as_json: bool = JSON_OPTION,
):
    """Publish again the folders that unfinished file scans still wait for (lost messages)."""
    from common.settings import get_settings
    from orchestrator.inventory.service import resume_scans
    from orchestrator.jobs import JobError
    from orchestrator.worker import start_local_worker, stop_grace

    if start_worker is None:
        start_worker = wait and get_settings().broker_is_embedded
    worker = start_local_worker() if start_worker else None
    ended = False  # the scans the worker serves have all finished
    try:
        try:
            share_ids = resume_scans(job)
        except JobError as exc:
            fail(str(exc))
        finished, worker_gone = True, None
        if wait and share_ids:
            finished, worker_gone = wait_with_worker(share_ids, timeout, worker)
        ended = finished
    finally:
        if worker is not None:
            worker.stop(stop_grace(ended))
    if as_json:
        emit_json({"resumed_share_ids": share_ids, "waited": wait, "finished": finished,
                   "worker_gone": worker_gone})
    else:
        console.print(f"{len(share_ids)} share scans resumed" + (
            "" if finished else f"; not finished: {escape(worker_gone)}" if worker_gone else "; not finished in time"),
            highlight=False)
    if not finished:
        raise typer.Exit(FAILURE)


def print_share_table(view: dict[str, Any]) -> None:
    """A table of every share with its scan counters."""
    table = Table("server", "share", "path", "scan", "files", "folders", "bytes", "errors", title="shares")
    for server in view["servers"]:
        for share in server["shares"]:
            scan = share["scan"]
            table.add_row(*plain(server["name"], share["name"], share["path"], scan["state"], str(scan["files"]),
                          str(scan["directories"]), str(scan["bytes"]), str(scan["errors"])))
    console.print(table)


@inventory_app.command("show")
def inventory_show(job: str = typer.Argument(..., help="Job name or id."), as_json: bool = JSON_OPTION):
    """Show what the inventory found: servers, shares, volumes, users and groups, files."""
    from common.db import session_scope
    from orchestrator.inventory.service import inventory_view
    from orchestrator.jobs import JobError

    try:
        with session_scope() as session:
            view = inventory_view(session, job)
    except JobError as exc:
        fail(str(exc))
    if as_json:
        emit_json(view)
        return
    console.print(f"job [bold]{escape(view['job'])}[/bold] (id {view['job_id']}), state {view['state']}", highlight=False)
    for server in view["servers"]:
        facts = server["facts"] or {}
        console.rule(escape(f"{server['name']} ({server['kind']}, {server['address']})"))
        if facts:
            console.print(escape(f"host {facts['hostname']}  domain {facts['domain'] or '-'}  "
                                 f"OS {facts['os_name']} {facts['os_version']}  "
                                 f"machine SID {facts['machine_sid'] or '-'}"), highlight=False)
            addresses = Table("adapter", "MAC", "addresses", "gateway", "DNS", title="network")
            for adapter in facts["network_adapters"]:
                ips = [f"{a['address']}/{a['prefix']}" for a in adapter["ipv4"] + adapter["ipv6"]]
                addresses.add_row(*plain(adapter["name"], adapter["mac"] or "", ", ".join(ips),
                                  adapter["gateway"] or "", ", ".join(adapter["dns"])))
            console.print(addresses)
            volumes = Table("mount point", "filesystem", "size", "free", "device", title="volumes")
            for volume in facts["volumes"]:
                volumes.add_row(*plain(volume["mount_point"], volume["filesystem"] or "", str(volume["size"]),
                                str(volume["free"]), volume["device"] or ""))
            console.print(volumes)
        shares = Table("share", "path", "remark", "ABE", "caching", "encrypt", "user limit", "permissions",
                       "scan", "files", "folders", "bytes", "errors", title="shares")
        for share in server["shares"]:
            scan, props = share["scan"], share["properties"] or {}
            permissions = "; ".join(f"{a['access_type']} {a['trustee']} {a['right']}" for a in props.get("access", []))
            shares.add_row(*plain(share["name"], share["path"], share["remark"], str(share["access_based_enumeration"]),
                           str(share["caching_mode"]), str(share["encrypt_data"]), str(share["max_uses"]),
                           permissions, scan["state"], str(scan["files"]), str(scan["directories"]),
                           str(scan["bytes"]), str(scan["errors"])))
        console.print(shares)
        principals = Table("kind", "name", "SID", "enabled", "members", title="local users and groups")
        for user in server["users"]:
            principals.add_row(*plain("user", user["name"], user["sid"], str(user["enabled"]), ""))
        for group in server["groups"]:
            principals.add_row(*plain("group", group["name"], group["sid"], "",
                               ", ".join(m["name"] for m in group["members"])))
        console.print(principals)
        for error in server["errors"]:
            console.print(f"[red]error:[/red] {escape(error['message'])}", highlight=False)
        for share in server["shares"]:
            for failure in share["scan"]["failed"]:
                console.print(f"[red]scan error[/red] {escape(share['name'])}: {escape(failure['message'])}", highlight=False)
