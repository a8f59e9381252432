"""``sms cutover ...``: plan a cutover, run it, watch it, resume it, roll it back.

Commands: ``plan`` (which of the source's addresses move to which destination interface,
the source's new name, random unless given, and new address, static or ``dhcp``, the
timeout; creates a pending run), ``run`` (start it: ``--wait`` drives it here and shows
each stage's progress, otherwise a detached ``sms cutover run ID --wait`` does, logging
to the state directory), ``resume`` (continue a failed run at its failed stage),
``rollback`` (give the source back its name, addresses and share access) and
``status``. ``run`` and ``resume`` take ``--timeout`` to replace the plan's limit (e.g.
for a final delta that needs longer).

Exit codes: 0 done as asked (succeeded, rolled back, started); 1 the cutover stopped at a
failed stage or a rollback is incomplete (resume or roll back); 2 refused (bad plan,
unknown run, wrong state). ``status`` exits 1 for a failed run.

It must never print a credential, and never take one on its command line.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from common.models import Job, RunState
from orchestrator.cutover.plan import DHCP
from orchestrator.transfer.cli import _prepare_database

cutover_app = typer.Typer(help="Cut over: the destination takes the source's name, addresses and shares.",
                          no_args_is_help=True)
console = Console()
POLL_SECONDS = 0.5


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _json_default(value):
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _print_json(data) -> None:
    print(json.dumps(data, default=_json_default))


def _status(run_id: int) -> dict:
    from common.db import session_scope
    from orchestrator.cutover.service import cutover_status

    try:
        with session_scope() as session:
            return cutover_status(session, run_id)
    except LookupError as exc:
        _fail(str(exc))


def _print_status(status: dict) -> None:
    plan = status["plan"]
    console.print(f"cutover run {status['id']}: {status['source']} -> {status['destination']}, "
                  f"[bold]{status['state']}[/bold] {status['error']}")
    moves = ", ".join(f"{m['address']}/{m['prefix_length']} {m['source_interface']} -> "
                      f"{m['destination_interface']}" for m in plan.get("addresses", []))
    if plan.get("source_new_address") == DHCP:
        new_address = f"an address from DHCP ({status['source_new_address'] or 'not leased yet'})"
    else:
        new_address = f"{plan.get('source_new_address')}/{plan.get('source_new_prefix_length')}"
    console.print(f"moves: {moves}; source becomes {plan.get('source_new_name')} at {new_address} on "
                  f"{plan.get('source_new_interface')}; timeout {plan.get('timeout_seconds')} s")
    table = Table("#", "stage", "state", "progress", "message")
    for stage in status["stages"]:
        table.add_row(str(stage["position"]), stage["title"] or stage["name"], stage["state"],
                      f"{stage['progress'] * 100:.0f} %", stage["message"])
    console.print(table)


@cutover_app.command("plan")
def plan(job: str = typer.Option(..., help="Job name."),
         source: str = typer.Option(..., help="Source server to cut over."),
         destination: str = typer.Option(None, help="Destination server (needed if the source has several)."),
         move: list[str] = typer.Option(..., "--move",
                                        help="ADDRESS/PREFIX:SOURCE_IF=DESTINATION_IF, an address of the source "
                                             "that moves to the destination's interface (repeat)."),
         new_address: str = typer.Option(..., help="The source's new address: static ADDRESS/PREFIX, or dhcp "
                                                   "(leased on the new interface at cutover)."),
         new_interface: str = typer.Option(None, help="Interface for it (default: the first move's)."),
         new_name: str = typer.Option(None, help="The source's new name (default: random, SMS-XXXXXXXX)."),
         maintenance_host: list[str] = typer.Option([], "--maintenance-host",
                                                    help="Host still allowed on the source's shares "
                                                         "(Samba; repeat; default 127.0.0.1)."),
         timeout: int = typer.Option(3600, help="Seconds one run or resume may take."),
         verify_files: int = typer.Option(5, help="Files per share read back in verification."),
         override_reconciliation: bool = typer.Option(
             False, help="Accept a last transfer that does not reconcile clean."),
         as_json: bool = typer.Option(False, "--json")):
    """Plan a cutover of a source: creates a pending run (start it with 'sms cutover run')."""
    from common.db import session_scope
    from orchestrator.cutover.service import parse_address, parse_move, plan_cutover
    from orchestrator.cutover.stages import CutoverError

    _prepare_database()
    try:
        moves = [parse_move(item) for item in move]
        address, prefix_length = parse_address(new_address)
        with session_scope() as session:
            job_row = session.scalar(select(Job).where(Job.name == job))
            if job_row is None:
                _fail(f"no job {job!r}")
            run_id = plan_cutover(session, job_row, source, destination=destination, addresses=moves,
                                  new_address=address, new_prefix_length=prefix_length,
                                  new_interface=new_interface, new_name=new_name,
                                  maintenance_hosts=maintenance_host, timeout_seconds=timeout,
                                  override_reconciliation=override_reconciliation,
                                  verify_files=verify_files).id
    except CutoverError as exc:
        _fail(str(exc))
    status = _status(run_id)
    if as_json:
        _print_json(status)
    else:
        _print_status(status)
        console.print(f"start it with: sms cutover run {run_id} --wait")


def _watch(run_id: int, drive, quiet: bool) -> RunState:
    """Run ``drive`` in a thread; print each stage's progress as it changes; its result."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["state"] = drive()
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"cutover-{run_id}", daemon=True)
    thread.start()
    seen: dict[str, tuple] = {}
    while True:
        finished = not thread.is_alive()
        if not quiet:
            for stage in _status(run_id)["stages"]:
                key = (stage["state"], round(stage["progress"], 2), stage["message"])
                if seen.get(stage["name"]) != key and stage["state"] != "pending":
                    seen[stage["name"]] = key
                    colour = {"succeeded": "green", "failed": "red"}.get(stage["state"], "cyan")
                    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {stage['position']}. "
                                  f"{stage['title']}: [{colour}]{stage['state']}[/{colour}] "
                                  f"{stage['progress'] * 100:3.0f} % {stage['message']}")
        if finished:
            break
        thread.join(POLL_SECONDS)
    if "error" in outcome:
        _fail(str(outcome["error"]))
    return outcome["state"]


def _drive(run_id: int, *, resume: bool, takeover: bool, wait: bool, as_json: bool,
           timeout: int | None) -> None:
    from orchestrator.cutover.delta import EngineDeltaTransfer
    from orchestrator.cutover.service import EXIT_CODES, check_can_drive, drive_cutover, start_driver
    from orchestrator.cutover.stages import CutoverError

    if timeout is not None and timeout <= 0:
        _fail("the timeout must be positive")
    if not wait:
        try:
            process, log = start_driver(run_id, resume=resume, takeover=takeover, timeout_seconds=timeout)
        except (CutoverError, LookupError) as exc:
            _fail(str(exc))
        if as_json:
            _print_json({"id": run_id, "driver_pid": process.pid, "driver_log": str(log)})
        else:
            console.print(f"cutover run {run_id} {'resumed' if resume else 'started'} in the background; "
                          f"follow with 'sms cutover status {run_id}' (log: {log})")
        return
    try:
        check_can_drive(run_id, resume=resume, takeover=takeover)
    except (CutoverError, LookupError) as exc:
        _fail(str(exc))
    def say(line: str) -> None:
        if not as_json:
            console.print(f"[dim]{time.strftime('%H:%M:%S')}   final delta transfer:[/dim] {line}")

    delta = EngineDeltaTransfer(progress=say)
    state = _watch(run_id, lambda: drive_cutover(run_id, resume=resume, takeover=takeover, delta=delta,
                                                 timeout_seconds=timeout), as_json)
    status = _status(run_id)
    if as_json:
        _print_json(status)
    else:
        _print_status(status)
        if state == RunState.FAILED:
            console.print(f"fix the cause, then 'sms cutover resume {run_id}', or 'sms cutover rollback {run_id}'")
    raise typer.Exit(EXIT_CODES.get(state, 2))


@cutover_app.command("run")
def run(run_id: int = typer.Argument(..., help="Cutover run id (from 'sms cutover plan')."),
        wait: bool = typer.Option(False, "--wait", help="Drive it here and show the stages' progress."),
        takeover: bool = typer.Option(False, help="Take over a run whose driving process is gone."),
        timeout: int = typer.Option(None, help="Seconds this run may take (replaces the plan's timeout)."),
        as_json: bool = typer.Option(False, "--json")):
    """Start a planned cutover."""
    _drive(run_id, resume=False, takeover=takeover, wait=wait, as_json=as_json, timeout=timeout)


@cutover_app.command("resume")
def resume(run_id: int = typer.Argument(..., help="Cutover run id."),
           wait: bool = typer.Option(False, "--wait", help="Drive it here and show the stages' progress."),
           takeover: bool = typer.Option(False, help="Take over a run whose driving process is gone."),
           timeout: int = typer.Option(None, help="Seconds this resume may take (replaces the plan's timeout)."),
           as_json: bool = typer.Option(False, "--json")):
    """Continue a failed cutover at the stage that failed."""
    _drive(run_id, resume=True, takeover=takeover, wait=wait, as_json=as_json, timeout=timeout)


@cutover_app.command("rollback")
def rollback(run_id: int = typer.Argument(..., help="Cutover run id."),
             as_json: bool = typer.Option(False, "--json")):
    """Give the source back its name, addresses and share access; release the destination."""
    from orchestrator.cutover.service import rollback_cutover
    from orchestrator.cutover.stages import CutoverError

    try:
        failures = rollback_cutover(run_id)
    except (CutoverError, LookupError) as exc:
        _fail(str(exc))
    status = _status(run_id)
    if as_json:
        _print_json({**status, "rollback_failures": failures})
    else:
        _print_status(status)
        for failure in failures:
            console.print(f"[red]not undone:[/red] {failure}")
    raise typer.Exit(1 if failures else 0)


@cutover_app.command("status")
def status(run_id: int = typer.Argument(..., help="Cutover run id."),
           as_json: bool = typer.Option(False, "--json")):
    """Show a cutover run: its plan and each stage's state, progress and message."""
    report = _status(run_id)
    if as_json:
        _print_json(report)
    else:
        _print_status(report)
    raise typer.Exit(1 if report["state"] == RunState.FAILED.value else 0)
