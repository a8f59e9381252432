"""``sms transfer ...``: pair servers, run transfers, watch them, reconcile, export logs.

Commands: ``pair`` (a source with a destination, and the shares to move), ``run`` (start
a run of one pairing or of every pairing of a job at once, with the checksum, retries,
retry delay, maximum duration, local accounts and system folder options; ``--wait``
drives it here to the end and prints the reconciliation), ``drive`` (drive an already
created run in this process: what ``run`` without ``--wait`` starts in the background;
also resumes a run whose driver died, from the database state), ``status`` (progress and reconciliation),
``list`` (runs of a job), ``export`` (the run's transfer CSV and error-only CSV),
``cancel`` (a run whose driver died, or that should stop) and ``gate`` (may cutover go
ahead?).

In embedded mode (SQLite broker) the commands that drive runs start one local
``sms-worker`` per destination and stop it at the end; with Redis, workers run wherever
the operator started them. Exit codes: 0 succeeded (or clean), 1 completed with errors
(or not clean), 2 failure.

It must never print a credential, and never take one on its command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select

from common.models import Batch, BatchState, Job, Pairing, RunState, Server, TransferRun
# The defaults and choices of ``sms transfer run``: Typer needs them to build the command tree.
from common.transfer_options import (
    CHECKSUM_CHOICES,
    DEFAULT_RETRIES,
    DEFAULT_RETRY_DELAY,
    PRINCIPAL_CHOICES,
    TransferOptions,
)
from orchestrator.transfer.logs import export_run_logs

if TYPE_CHECKING:
    from orchestrator.transfer.reconcile import RunReconciliation

transfer_app = typer.Typer(help="Transfer shares from sources to destinations.", no_args_is_help=True)
console = Console()

EXIT_CODES = {RunState.SUCCEEDED: 0, RunState.COMPLETED_WITH_ERRORS: 1}


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _prepare_database() -> None:
    """In embedded mode, create or upgrade the SQLite job database on first use."""
    from common.settings import get_settings

    settings = get_settings()
    if settings.database_url.startswith("sqlite"):
        from orchestrator.database import upgrade_to_head

        settings.ensure_state_dir()
        upgrade_to_head(settings.database_url)


def _server(session, job: Job, name: str) -> Server:
    server = session.scalar(select(Server).where(Server.job_id == job.id, Server.name == name))
    if server is None:
        _fail(f"job {job.name!r} has no server {name!r}")
    return server


def _job(session, name: str) -> Job:
    job = session.scalar(select(Job).where(Job.name == name))
    if job is None:
        _fail(f"no job {name!r}")
    return job


@transfer_app.command("pair")
def pair(job: str = typer.Option(..., help="Job name."),
         source: str = typer.Option(..., help="Source server name."),
         destination: str = typer.Option(..., help="Destination server name."),
         share: list[str] = typer.Option([], "--share", help="Share to transfer (repeat); default all."),
         path_map: list[str] = typer.Option([], "--path-map",
                                            help="SOURCE_PREFIX=DESTINATION_PREFIX folder mapping (repeat) "
                                                 "used to recreate shares on a manageable destination."),
         as_json: bool = typer.Option(False, "--json")):
    """Pair a source server with a destination server and choose the shares to move."""
    from common.db import session_scope
    from orchestrator.transfer import planning

    if any("=" not in item for item in path_map):
        _fail("--path-map takes SOURCE_PREFIX=DESTINATION_PREFIX")
    mapping = dict(item.split("=", 1) for item in path_map)
    _prepare_database()
    with session_scope() as session:
        job_row = _job(session, job)
        try:
            pairing = planning.create_pairing(session, _server(session, job_row, source),
                                              _server(session, job_row, destination), share, mapping)
        except planning.TransferError as exc:
            _fail(str(exc))
        result = {"pairing_id": pairing.id, "source": source, "destination": destination,
                  "shares": list(pairing.shares), "path_mapping": dict(pairing.path_mapping)}
    if as_json:
        print(json.dumps(result))
    else:
        console.print(f"pairing {result['pairing_id']}: {source} -> {destination}, shares: "
                      f"{', '.join(result['shares']) or 'all inventoried'}")


def _pairings(session, job: str | None, pairing_ids: list[int]) -> list[Pairing]:
    if pairing_ids:
        found = [session.get(Pairing, pairing_id) for pairing_id in pairing_ids]
        missing = [pid for pid, pairing in zip(pairing_ids, found) if pairing is None]
        if missing:
            _fail(f"no pairing {missing}")
        return found
    if job is None:
        _fail("name a --pairing or a --job")
    found = list(session.scalars(select(Pairing).where(Pairing.job_id == _job(session, job).id)
                                 .order_by(Pairing.id)))
    if not found:
        _fail(f"job {job!r} has no pairing: use 'sms transfer pair' first")
    return found


def _destinations(run_ids: list[int]) -> list[str]:
    from common.db import session_scope

    with session_scope() as session:
        return [session.scalar(select(Server.name).join(Pairing, Pairing.destination_server_id == Server.id)
                               .join(TransferRun, TransferRun.pairing_id == Pairing.id)
                               .where(TransferRun.id == run_id)) for run_id in run_ids]


def drive_runs(run_ids: list[int], *, start_workers: bool | None = None,
               concurrency: int | None = None, quiet: bool = False,
               resume: bool = False) -> dict[int, RunState]:
    """Drive every run to its end at once (one thread per run); returns their final states.

    ``start_workers`` (default: when the broker is embedded) starts one local worker per
    destination for the duration. ``resume`` also continues runs left running by a
    driver that died.
    """
    from common.db import session_scope
    from common.settings import get_settings
    from orchestrator.transfer import planning
    from orchestrator.transfer.workers import LocalWorkers, WorkerStartError
    from orchestrator.worker import stop_grace

    if start_workers is None:
        start_workers = get_settings().broker_is_embedded
    workers = LocalWorkers(_destinations(run_ids), concurrency=concurrency) if start_workers else None
    if workers is not None:
        try:
            workers.start()
        except WorkerStartError as exc:
            with session_scope() as session:
                for run_id in run_ids:
                    planning.cancel_run(session, run_id, f"not started: {exc}")
            _fail(str(exc))
    states: dict[int, RunState] = {}
    failures: dict[int, BaseException] = {}
    ended = False

    def drive(run_id: int) -> None:
        def say(line: str) -> None:
            if not quiet:
                console.print(f"[dim]{time.strftime('%H:%M:%S')} run {run_id}:[/dim] {line}")
        try:
            states[run_id] = planning.execute_run(run_id, progress=say, resume=resume)
        except BaseException as exc:  # noqa: BLE001 - recorded on the run by execute_run
            failures[run_id] = exc
            states[run_id] = RunState.FAILED

    try:
        threads = [threading.Thread(target=drive, args=(run_id,), name=f"run-{run_id}")
                   for run_id in run_ids]
        for thread in threads:
            thread.start()
        if quiet:
            for thread in threads:
                thread.join()
        else:
            _show_progress_bars(run_ids, threads)
        ended = True
    finally:
        if workers is not None:
            workers.stop(stop_grace(ended))
    for run_id, exc in failures.items():
        console.print(f"[red]run {run_id} failed:[/red] {type(exc).__name__}: {exc}")
    return states


def _batch_counts(run_ids: list[int]) -> dict[int, tuple[int, int]]:
    """(finished batches, all batches) of each run, from the job database."""
    from common.db import session_scope

    counts = {run_id: (0, 0) for run_id in run_ids}
    finished = Batch.state.in_((BatchState.DONE, BatchState.FAILED))
    with session_scope() as session:
        rows = session.execute(
            select(Batch.run_id, func.count(), func.count().filter(finished))
            .where(Batch.run_id.in_(run_ids)).group_by(Batch.run_id)).all()
    for run_id, total, done in rows:
        counts[run_id] = (done, total)
    return counts


def _show_progress_bars(run_ids: list[int], threads: list[threading.Thread]) -> None:
    """A Rich progress bar per run (finished / planned batches, read from the database)
    until every driving thread has ended; the drivers' own lines print above the bars."""
    columns = (TextColumn("run {task.fields[run_id]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("batches"), TimeElapsedColumn())
    with Progress(*columns, console=console) as bars:
        tasks = {run_id: bars.add_task("", total=None, run_id=run_id) for run_id in run_ids}
        while any(thread.is_alive() for thread in threads):
            for run_id, (done, total) in _batch_counts(run_ids).items():
                bars.update(tasks[run_id], completed=done, total=total or None)
            for thread in threads:
                thread.join(timeout=0.5 / len(threads))
        for run_id, (done, total) in _batch_counts(run_ids).items():
            bars.update(tasks[run_id], completed=done, total=total or None)


def _print_reconciliation(report: RunReconciliation) -> None:
    table = Table("share", "inventoried", "copied", "verified", "unchanged", "missing",
                  "mismatched", "failed", "walk errors", "clean",
                  title=f"run {report.run_id}: {report.state}")
    for share in report.shares:
        table.add_row(share.share, str(share.inventoried), str(share.copied), str(share.verified),
                      str(share.unchanged), str(share.missing), str(share.mismatched),
                      str(share.failed), str(share.walk_errors), "yes" if share.clean else "NO")
    console.print(table)


@transfer_app.command("run")
def run(job: str = typer.Option(None, help="Job name: run every pairing of the job at once."),
        pairing: list[int] = typer.Option([], "--pairing", help="Pairing id (repeat)."),
        checksum: str = typer.Option("none", help=f"Validation: {' | '.join(CHECKSUM_CHOICES)}."),
        retries: int = typer.Option(DEFAULT_RETRIES, help="Extra tries of a failed file."),
        retry_delay: float = typer.Option(DEFAULT_RETRY_DELAY, help="Seconds between tries."),
        copy_sacl: bool = typer.Option(False, help="Copy SACLs too (needs the privilege)."),
        migrate_principals: str = typer.Option(
            "rename", help=f"Local users and groups: {' | '.join(PRINCIPAL_CHOICES)} (rename conflicting "
                           "accounts, merge with existing ones, or do not migrate)."),
        max_duration: float = typer.Option(0, help="Seconds after which nothing more is dispatched "
                                                   "(0: no limit)."),
        include_system_folders: bool = typer.Option(
            False, help="Also copy Windows, Program Files, Users, System Volume Information, "
                        "$Recycle.bin and pagefile.sys at share roots (SMS never does)."),
        share_map: list[str] = typer.Option([], "--share-map",
                                            help="SOURCE=DESTINATION share name (repeat); "
                                                 "default: the same name."),
        wait: bool = typer.Option(False, "--wait", help="Drive the run here to the end."),
        concurrency: int = typer.Option(0, help="Processes per local worker (embedded mode)."),
        as_json: bool = typer.Option(False, "--json")):
    """Start a transfer run for each chosen pairing."""
    from common.db import session_scope
    from orchestrator.transfer import planning
    from orchestrator.transfer.reconcile import reconcile

    try:
        mapping = dict(item.split("=", 1) for item in share_map)
        options = TransferOptions(checksum=checksum, retries=retries, retry_delay=retry_delay,
                                  copy_sacl=copy_sacl, share_map=mapping,
                                  migrate_principals=migrate_principals, max_duration=max_duration,
                                  skip_system_folders=not include_system_folders)
    except ValueError as exc:
        _fail(f"bad option: {exc}")
    _prepare_database()
    with session_scope() as session:
        try:
            run_ids = [planning.create_run(session, chosen, options).id
                       for chosen in _pairings(session, job, pairing)]
        except planning.TransferError as exc:
            _fail(str(exc))
    if not wait:
        log = _background_drive(run_ids, concurrency)
        if as_json:
            print(json.dumps({"run_ids": run_ids, "log": str(log)}))
        else:
            console.print(f"runs {run_ids} started; follow with 'sms transfer status RUN_ID' "
                          f"(driver log: {log})")
        return
    states = drive_runs(run_ids, concurrency=concurrency or None, quiet=as_json)
    with session_scope() as session:
        reports = [reconcile(session, run_id) for run_id in run_ids]
    if as_json:
        print(json.dumps([report.to_json() for report in reports]))
    else:
        for report in reports:
            _print_reconciliation(report)
    raise typer.Exit(max(EXIT_CODES.get(state, 2) for state in states.values()))


def _background_drive(run_ids: list[int], concurrency: int) -> Path:
    """Start a detached ``sms transfer drive`` for ``run_ids``; returns its log file."""
    from common.settings import get_settings

    log_dir = get_settings().ensure_state_dir() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"transfer-drive-{'-'.join(map(str, run_ids))}.log"
    argv = [sys.executable, "-m", "orchestrator.cli", "transfer", "drive"]
    argv += [str(run_id) for run_id in run_ids]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    with open(log, "wb") as out:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True, env=dict(os.environ))
    return log


@transfer_app.command("drive")
def drive(run_id: list[int] = typer.Argument(..., help="Run ids to drive to the end."),
          concurrency: int = typer.Option(0, help="Processes per local worker (embedded mode).")):
    """Drive created runs to their end in this process (what 'run' starts in the background).

    A run left running by a driver that died is resumed from the database state: make sure
    that driver is really gone first.
    """
    states = drive_runs(run_id, concurrency=concurrency or None, resume=True)
    raise typer.Exit(max(EXIT_CODES.get(state, 2) for state in states.values()))


@transfer_app.command("status")
def status(run_id: int = typer.Argument(..., help="Transfer run id."),
           as_json: bool = typer.Option(False, "--json")):
    """Show a run's progress and its reconciliation."""
    from common.db import session_scope
    from orchestrator.transfer.reconcile import reconcile

    with session_scope() as session:
        run_row = session.get(TransferRun, run_id)
        if run_row is None:
            _fail(f"no transfer run {run_id}")
        batches = dict(session.execute(select(Batch.state, func.count()).where(Batch.run_id == run_id)
                                       .group_by(Batch.state)).all())
        report = reconcile(session, run_id)
        progress = {
            "run_id": run_id, "state": run_row.state.value, "error": run_row.error,
            "files_total": run_row.files_total, "bytes_total": run_row.bytes_total,
            "files_copied": run_row.files_copied, "files_skipped": run_row.files_skipped,
            "files_failed": run_row.files_failed,
            "batches": {state.value: batches.get(state, 0) for state in BatchState},
            "options": run_row.options,
        }
    if as_json:
        print(json.dumps({**progress, "reconciliation": report.to_json()}))
        return
    console.print(f"run {run_id}: {progress['state']} {progress['error']}")
    console.print("batches: " + ", ".join(f"{k} {v}" for k, v in progress["batches"].items()))
    _print_reconciliation(report)


@transfer_app.command("list")
def list_runs(job: str = typer.Option(..., help="Job name."),
              as_json: bool = typer.Option(False, "--json")):
    """List the transfer runs of a job, newest first."""
    from common.db import session_scope

    with session_scope() as session:
        job_row = _job(session, job)
        runs = [{"run_id": r.id, "pairing_id": r.pairing_id, "state": r.state.value,
                 "files_total": r.files_total, "files_copied": r.files_copied,
                 "files_skipped": r.files_skipped, "files_failed": r.files_failed,
                 "created_at": r.created_at.isoformat()}
                for r in session.scalars(select(TransferRun).where(TransferRun.job_id == job_row.id)
                                         .order_by(TransferRun.id.desc()))]
    if as_json:
        print(json.dumps(runs))
        return
    table = Table("run", "pairing", "state", "files", "copied", "unchanged", "failed", "created")
    for r in runs:
        table.add_row(str(r["run_id"]), str(r["pairing_id"]), r["state"], str(r["files_total"]),
                      str(r["files_copied"]), str(r["files_skipped"]), str(r["files_failed"]),
                      r["created_at"])
    console.print(table)


@transfer_app.command("export")
def export(run_id: int = typer.Argument(..., help="Transfer run id."),
           directory: Path = typer.Option(Path("."), "--dir", help="Where to write the CSV files.")):
    """Write the run's transfer log and error-only log as CSV files."""
    from common.db import session_scope

    with session_scope() as session:
        if session.get(TransferRun, run_id) is None:
            _fail(f"no transfer run {run_id}")
        full, errors = export_run_logs(session, run_id, directory)
    console.print(f"{full}\n{errors}")


@transfer_app.command("cancel")
def cancel(run_id: int = typer.Argument(..., help="Transfer run id.")):
    """Cancel a pending or running run: its driver stops, workers skip its remaining batches."""
    from common.db import session_scope
    from orchestrator.transfer import planning

    with session_scope() as session:
        if session.get(TransferRun, run_id) is None:
            _fail(f"no transfer run {run_id}")
        cancelled = planning.cancel_run(session, run_id)
    if not cancelled:
        _fail(f"run {run_id} has already ended", 1)
    console.print(f"run {run_id} cancelled")


@transfer_app.command("gate")
def gate(run_id: int = typer.Argument(..., help="Transfer run id."),
         override: bool = typer.Option(False, help="Allow cutover although the run is not clean.")):
    """Exit 0 when cutover may follow this run (clean, or overridden), 1 otherwise."""
    from common.db import session_scope
    from orchestrator.transfer.reconcile import cutover_allowed

    with session_scope() as session:
        if session.get(TransferRun, run_id) is None:
            _fail(f"no transfer run {run_id}")
        allowed = cutover_allowed(session, run_id, override=override)
    console.print("cutover allowed" if allowed else "cutover refused: the run is not clean")
    raise typer.Exit(0 if allowed else 1)
