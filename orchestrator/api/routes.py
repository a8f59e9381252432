"""The API's endpoints, each a thin call of an orchestrator service.

Jobs and servers (``orchestrator.jobs``), inventory (``orchestrator.inventory.service``),
pairings, transfer runs, reconciliation and CSV logs (``orchestrator.transfer``), and the
status of cutover runs (read from the ``CutoverRun`` rows that ``orchestrator.cutover``
keeps). Every endpoint opens its own transaction, committed before the answer is sent.
A lookup that finds nothing is a 404 naming what was asked for; a service's refusal is a
400 (or 409 for a conflict) carrying the service's own message.

Transfer runs are driven by a separate ``sms transfer drive`` process (as the CLI does),
started with this API's settings in its environment, never on its command line. This
module must never put a credential in a response, a log line or a process argument.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from common.db import session_scope
from common.models import (
    Batch,
    BatchState,
    CutoverRun,
    Event,
    FileRecord,
    Job,
    Pairing,
    Server,
    TransferRun,
)
from common.settings import Settings
from common.transfer_options import TransferOptions
from orchestrator.api import schemas
from orchestrator.inventory.service import InventoryOptions, inventory_view, run_inventory
from orchestrator.jobs import (
    SECRET_MANAGEMENT_KEYS,
    JobError,
    SambaManagement,
    WindowsManagement,
    add_server,
    create_job,
    get_job,
    get_server,
    list_jobs,
    list_servers,
    server_summary,
)
from orchestrator.transfer import planning
from orchestrator.transfer.logs import ERROR_STATES, error_entries, write_csv
from orchestrator.transfer.reconcile import reconcile

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api")
CSV_SPOOL_BYTES = 8 << 20


# --- helpers ------------------------------------------------------------------------------

@contextmanager
def database(request: Request) -> Iterator[Session]:
    """A transaction on the API's job database, committed when the block ends."""
    with session_scope(request.app.state.settings.database_url) as session:
        yield session


def not_found(message: str) -> HTTPException:
    """A 404 whose message names what was not found."""
    return HTTPException(status.HTTP_404_NOT_FOUND, message)


def find_job(session: Session, ref: str) -> Job:
    """The job named (or numbered) ``ref``; 404 when there is none."""
    try:
        return get_job(session, ref)
    except JobError:
        raise not_found(f"job {ref!r} not found") from None


def find_server(session: Session, job: Job, ref: str) -> Server:
    """The server of ``job`` named (or numbered) ``ref``; 404 when there is none."""
    try:
        return get_server(session, job, ref)
    except JobError:
        raise not_found(f"server {ref!r} not found in job {job.name!r}") from None


def find_run(session: Session, job: Job, run_id: int) -> TransferRun:
    """Transfer run ``run_id`` of ``job``; 404 when the job has no such run."""
    run = session.get(TransferRun, run_id)
    if run is None or run.job_id != job.id:
        raise not_found(f"transfer run {run_id} not found in job {job.name!r}")
    return run


def server_out(server: Server) -> dict[str, Any]:
    """A server for a response: whether a password is stored, never the password."""
    summary = server_summary(server)
    summary.pop("password")
    summary["password_stored"] = server.credential is not None
    management = summary["management"]
    for key in SECRET_MANAGEMENT_KEYS:
        if key in management and management[key] is None:
            del management[key]
    return summary


def job_out(session: Session, job: Job) -> dict[str, Any]:
    """A job with its servers, for a response."""
    return {"id": job.id, "name": job.name, "description": job.description,
            "state": job.state.value, "created_at": job.created_at,
            "servers": [server_out(server) for server in list_servers(session, job)]}


def secret(value) -> str | None:
    """The clear text of a SecretStr field, for the service that encrypts it."""
    return value.get_secret_value() if value is not None else None


# --- jobs and servers -------------------------------------------------------------------

@router.post("/jobs", status_code=status.HTTP_201_CREATED, response_model=schemas.JobOut,
             tags=["jobs"], summary="Create a migration job")
def create_job_endpoint(body: schemas.JobIn, request: Request):
    """Create a migration job."""
    with database(request) as session:
        if session.scalar(select(Job.id).where(Job.name == body.name)) is not None:
            raise HTTPException(status.HTTP_409_CONFLICT,
                                f"a job named {body.name!r} already exists: choose another name")
        try:
            job = create_job(session, body.name, body.description)
        except JobError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        return job_out(session, job)


@router.get("/jobs", response_model=list[schemas.JobOut], tags=["jobs"], summary="List jobs")
def list_jobs_endpoint(request: Request):
    """List jobs."""
    with database(request) as session:
        return [job_out(session, job) for job in list_jobs(session)]


@router.get("/jobs/{job}", response_model=schemas.JobDetailOut, tags=["jobs"],
            summary="Show a job, its servers and its latest events")
def show_job(job: str, request: Request, events: int = 50):
    """Show a job, its servers and its latest events."""
    with database(request) as session:
        record = find_job(session, job)
        rows = session.scalars(select(Event).where(Event.job_id == record.id)
                               .order_by(Event.id.desc()).limit(max(0, min(events, 1000)))).all()
        return {**job_out(session, record),
                "events": [{"at": e.at, "level": e.level.value, "kind": e.kind,
                            "server_id": e.server_id, "message": e.message} for e in reversed(rows)]}


@router.post("/jobs/{job}/servers", status_code=status.HTTP_201_CREATED, response_model=schemas.ServerOut,
             tags=["servers"], summary="Add a source or destination server (passwords are write-only)")
def add_server_endpoint(job: str, body: schemas.ServerIn, request: Request):
    """Add a source or destination server (passwords are write-only)."""
    samba = windows = None
    if body.samba is not None:
        samba = SambaManagement(ssh_user=body.samba.ssh_user, known_hosts=body.samba.known_hosts,
                                ssh_host=body.samba.ssh_host, ssh_port=body.samba.ssh_port,
                                key_file=body.samba.key_file, password=secret(body.samba.ssh_password),
                                smb_conf=body.samba.smb_conf)
    if body.windows is not None:
        options = body.windows
        windows = WindowsManagement(transport=options.transport.value, use_https=options.use_https,
                                    port=options.port, verify_certificate=options.verify_certificate,
                                    ca_bundle=options.ca_bundle, host=options.host, user=options.user,
                                    password=secret(options.password))
    with database(request) as session:
        record = find_job(session, job)
        name = body.name.strip()
        if session.scalar(select(Server.id).where(Server.job_id == record.id, Server.name == name)):
            raise HTTPException(status.HTTP_409_CONFLICT,
                                f"job {record.name!r} already has a server named {name!r}")
        try:
            server = add_server(session, record, name=name, role=body.role, kind=body.kind,
                                address=body.address, port=body.port, username=body.username,
                                password=secret(body.password), samba=samba, windows=windows)
        except JobError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        return server_out(server)


@router.get("/jobs/{job}/servers", response_model=list[schemas.ServerOut], tags=["servers"],
            summary="List a job's servers")
def list_servers_endpoint(job: str, request: Request):
    """List a job's servers."""
    with database(request) as session:
        return [server_out(server) for server in list_servers(session, find_job(session, job))]


@router.get("/jobs/{job}/servers/{server}", response_model=schemas.ServerOut, tags=["servers"],
            summary="Show one server (secrets only as stored or not)")
def show_server(job: str, server: str, request: Request):
    """Show one server (secrets only as stored or not)."""
    with database(request) as session:
        return server_out(find_server(session, find_job(session, job), server))


# --- inventory ----------------------------------------------------------------------------

def _scan_publisher(request: Request):
    """Publishes the inventory's directory tasks with the API's Celery app."""
    from orchestrator.inventory.tasks import publish_directories

    app = request.app.state.celery()

    def publish(tasks, options) -> None:
        publish_directories(app, tasks, options)

    return publish


@router.post("/jobs/{job}/inventory", response_model=schemas.InventoryRunOut, tags=["inventory"],
             summary="Inventory the job's source servers; file scans are queued for orchestrator workers")
def start_inventory(job: str, request: Request, body: schemas.InventoryIn | None = None):
    """Inventory the job's source servers; file scans are queued for orchestrator workers."""
    body = body or schemas.InventoryIn()
    settings: Settings = request.app.state.settings
    with database(request) as session:
        job_id = find_job(session, job).id
    options = InventoryOptions(include_admin_shares=body.include_admin_shares,
                               skip_excluded_folders=not body.scan_excluded_folders,
                               scan_files=body.scan_files, restart_running_scans=body.restart_running_scans)
    publish = _scan_publisher(request) if body.scan_files else None
    report = run_inventory(job_id, options, url=settings.database_url, publish=publish)
    data = report.to_dict()
    return {**data, "error_count": report.error_count, "scans_queued": len(report.scan_share_ids)}


def _inventory_counts(servers: list[dict[str, Any]]) -> dict[str, int]:
    shares = [share for server in servers for share in server["shares"]]
    return {
        "servers": len(servers),
        "shares": len(shares),
        "volumes": sum(len(server["volumes"]) for server in servers),
        "users": sum(len(server["users"]) for server in servers),
        "groups": sum(len(server["groups"]) for server in servers),
        "files": sum(share["scan"]["files"] for share in shares),
        "directories": sum(share["scan"]["directories"] for share in shares),
        "bytes": sum(share["scan"]["bytes"] for share in shares),
        "scan_errors": sum(share["scan"]["errors"] for share in shares),
        "server_errors": sum(len(server["errors"]) for server in servers),
    }


@router.get("/jobs/{job}/inventory", response_model=schemas.InventoryOut, tags=["inventory"],
            summary="What the inventory found: servers, shares, volumes, users and groups, counts")
def show_inventory(job: str, request: Request):
    """What the inventory found: servers, shares, volumes, users and groups, counts."""
    with database(request) as session:
        record = find_job(session, job)
        view = inventory_view(session, record.id)
        servers = {server.id: server for server in list_servers(session, record)}
        result = []
        for entry in view["servers"]:
            facts = entry["facts"]
            result.append({**entry, **server_out(servers[entry["id"]]),
                           "volumes": list(facts["volumes"]) if facts else []})
    return {"job_id": view["job_id"], "job": view["job"], "state": view["state"],
            "counts": _inventory_counts(result), "servers": result}


# --- pairings ------------------------------------------------------------------------------

def _pairing_out(session: Session, pairing: Pairing) -> dict[str, Any]:
    return {"id": pairing.id, "job_id": pairing.job_id,
            "source": session.get(Server, pairing.source_server_id).name,
            "destination": session.get(Server, pairing.destination_server_id).name,
            "shares": list(pairing.shares), "path_mapping": dict(pairing.path_mapping or {}),
            "created_at": pairing.created_at}


@router.post("/jobs/{job}/pairings", status_code=status.HTTP_201_CREATED, response_model=schemas.PairingOut,
             tags=["transfer"], summary="Pair a source with a destination (again: updates shares and mapping)")
def create_pairing(job: str, body: schemas.PairingIn, request: Request):
    """Pair a source with a destination (again: updates shares and mapping)."""
    with database(request) as session:
        record = find_job(session, job)
        source = find_server(session, record, body.source)
        destination = find_server(session, record, body.destination)
        try:
            pairing = planning.create_pairing(session, source, destination, body.shares, body.path_mapping)
        except planning.TransferError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        return _pairing_out(session, pairing)


@router.get("/jobs/{job}/pairings", response_model=list[schemas.PairingOut], tags=["transfer"],
            summary="List a job's pairings")
def list_pairings(job: str, request: Request):
    """List a job's pairings."""
    with database(request) as session:
        record = find_job(session, job)
        return [_pairing_out(session, pairing) for pairing in
                session.scalars(select(Pairing).where(Pairing.job_id == record.id).order_by(Pairing.id))]


# --- transfer runs -------------------------------------------------------------------------

def settings_environment(settings: Settings) -> dict[str, str]:
    """``settings`` as SMS_* variables, so a child process reads exactly the API's settings."""
    environment = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is not None:
            environment[f"SMS_{name.upper()}"] = str(value)
    return environment


def start_driver(request: Request, run_ids: list[int]) -> tuple[int, str]:
    """Start ``sms transfer drive RUN_IDS`` in its own session; returns its pid and log file.

    Settings (and so every secret) reach it through the environment, never argv. A thread
    waits for it so that it never lingers as a zombie; it outlives the API if the API stops.
    """
    settings: Settings = request.app.state.settings
    logs = settings.ensure_state_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"transfer-drive-{'-'.join(map(str, run_ids))}.log"
    argv = [sys.executable, "-m", "orchestrator.cli", "transfer", "drive", *map(str, run_ids)]
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True,
                                   env={**os.environ, **settings_environment(settings)})
    threading.Thread(target=process.wait, name=f"drive-{process.pid}", daemon=True).start()
    logger.info("transfer runs %s handed to driver pid %s (log %s)", run_ids, process.pid, log)
    return process.pid, str(log)


@router.post("/jobs/{job}/transfers", status_code=status.HTTP_202_ACCEPTED,
             response_model=schemas.TransferStartedOut, tags=["transfer"],
             summary="Start a transfer run of each chosen pairing (driven in the background)")
def start_transfer(job: str, body: schemas.TransferIn, request: Request):
    """Start a transfer run of each chosen pairing (driven in the background)."""
    try:
        options = TransferOptions(checksum=body.checksum.value, retries=body.retries,
                                  retry_delay=body.retry_delay, copy_sacl=body.copy_sacl,
                                  share_map=dict(body.share_map),
                                  migrate_principals=body.migrate_principals.value,
                                  max_duration=body.max_duration)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    with database(request) as session:
        record = find_job(session, job)
        if body.pairing_ids:
            pairings = []
            for pairing_id in body.pairing_ids:
                pairing = session.get(Pairing, pairing_id)
                if pairing is None or pairing.job_id != record.id:
                    raise not_found(f"pairing {pairing_id} not found in job {record.name!r}")
                pairings.append(pairing)
        else:
            pairings = list(session.scalars(select(Pairing).where(Pairing.job_id == record.id)
                                            .order_by(Pairing.id)))
            if not pairings:
                raise HTTPException(status.HTTP_409_CONFLICT,
                                    f"job {record.name!r} has no pairing: POST /api/jobs/{record.name}/pairings first")
        try:
            run_ids = [planning.create_run(session, pairing, options).id for pairing in pairings]
        except planning.TransferError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    pid, log = start_driver(request, run_ids)
    return {"run_ids": run_ids, "driver_pid": pid, "driver_log": log}


def _run_out(run: TransferRun) -> dict[str, Any]:
    return {column: getattr(run, column) for column in (
        "id", "job_id", "pairing_id", "options", "files_total", "files_copied", "files_skipped",
        "files_failed", "bytes_total", "bytes_copied", "error", "created_at", "started_at", "ended_at")} | {
        "state": run.state.value}


@router.get("/jobs/{job}/transfers", response_model=list[schemas.TransferRunOut], tags=["transfer"],
            summary="List a job's transfer runs, newest first")
def list_transfers(job: str, request: Request):
    """List a job's transfer runs, newest first."""
    with database(request) as session:
        record = find_job(session, job)
        return [_run_out(run) for run in session.scalars(
            select(TransferRun).where(TransferRun.job_id == record.id).order_by(TransferRun.id.desc()))]


@router.get("/jobs/{job}/transfers/{run_id}", response_model=schemas.TransferProgressOut, tags=["transfer"],
            summary="A run's progress: counters, batches by state, reconciliation so far")
def transfer_progress(job: str, run_id: int, request: Request):
    """A run's progress: counters, batches by state, reconciliation so far."""
    with database(request) as session:
        run = find_run(session, find_job(session, job), run_id)
        batches = dict(session.execute(select(Batch.state, func.count()).where(Batch.run_id == run_id)
                                       .group_by(Batch.state)).all())
        return {**_run_out(run), "batches": {state.value: batches.get(state, 0) for state in BatchState},
                "reconciliation": reconcile(session, run_id).to_json()}


@router.get("/jobs/{job}/transfers/{run_id}/reconciliation", response_model=schemas.ReconciliationOut,
            tags=["transfer"], summary="The run's per-share reconciliation report")
def transfer_reconciliation(job: str, run_id: int, request: Request):
    """The run's per-share reconciliation report."""
    with database(request) as session:
        find_run(session, find_job(session, job), run_id)
        return reconcile(session, run_id).to_json()


@router.post("/jobs/{job}/transfers/{run_id}/cancel", response_model=schemas.TransferRunOut, tags=["transfer"],
             summary="Cancel a pending or running run (workers skip its remaining batches)")
def cancel_transfer(job: str, run_id: int, request: Request):
    """Cancel a pending or running run (workers skip its remaining batches)."""
    with database(request) as session:
        run = find_run(session, find_job(session, job), run_id)
        if not planning.cancel_run(session, run_id):
            raise HTTPException(status.HTTP_409_CONFLICT, f"transfer run {run_id} has already ended ({run.state.value})")
        session.refresh(run)
        return _run_out(run)


@router.get("/jobs/{job}/transfers/{run_id}/logs/{kind}.csv", tags=["logs"],
            summary="Download the run's transfer log (kind=transfer) or error-only log (kind=errors) as CSV",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}}}})
def transfer_log(job: str, run_id: int, kind: schemas.LogKind, request: Request):
    """Download the run's transfer log (kind=transfer) or error-only log (kind=errors) as CSV."""
    spool = tempfile.SpooledTemporaryFile(max_size=CSV_SPOOL_BYTES, mode="w+", newline="", encoding="utf-8")
    try:
        with database(request) as session:
            find_run(session, find_job(session, job), run_id)
            write_csv(session, run_id, spool, errors_only=kind is schemas.LogKind.ERRORS)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    name = f"transfer-run-{run_id}{'-errors' if kind is schemas.LogKind.ERRORS else ''}.csv"

    def chunks() -> Iterator[bytes]:
        while block := spool.read(1 << 16):
            yield block.encode("utf-8")

    return StreamingResponse(chunks(), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'},
                             background=BackgroundTask(spool.close))


@router.get("/jobs/{job}/transfers/{run_id}/errors", response_model=schemas.TransferErrorsOut, tags=["logs"],
            summary="The run's error list (failed, mismatched and missing entries), first `limit` rows")
def transfer_errors(job: str, run_id: int, request: Request, limit: int = Query(200, ge=1, le=10_000)):
    """The run's error list (failed, mismatched and missing entries), first ``limit`` rows."""
    with database(request) as session:
        find_run(session, find_job(session, job), run_id)
        total = session.scalar(select(func.count()).select_from(FileRecord).where(
            FileRecord.run_id == run_id, FileRecord.state.in_(ERROR_STATES)))
        return {"run_id": run_id, "total": total, "errors": error_entries(session, run_id, limit)}


# --- cutover status --------------------------------------------------------------------------

def _cutover_out(run: CutoverRun) -> dict[str, Any]:
    return {"id": run.id, "job_id": run.job_id, "pairing_id": run.pairing_id, "state": run.state.value,
            "error": run.error, "created_at": run.created_at, "started_at": run.started_at,
            "ended_at": run.ended_at,
            "stages": [{"position": stage.position, "name": stage.name, "state": stage.state.value,
                        "progress": stage.progress, "message": stage.message,
                        "started_at": stage.started_at, "ended_at": stage.ended_at}
                       for stage in run.stages]}


@router.get("/jobs/{job}/cutovers", response_model=list[schemas.CutoverRunOut], tags=["cutover"],
            summary="A job's cutover runs with their stages (status only)")
def list_cutovers(job: str, request: Request):
    """A job's cutover runs with their stages (status only)."""
    with database(request) as session:
        record = find_job(session, job)
        return [_cutover_out(run) for run in session.scalars(
            select(CutoverRun).where(CutoverRun.job_id == record.id).order_by(CutoverRun.id))]


@router.get("/jobs/{job}/cutovers/{cutover_id}", response_model=schemas.CutoverRunOut, tags=["cutover"],
            summary="One cutover run: state and progress by stage")
def show_cutover(job: str, cutover_id: int, request: Request):
    """One cutover run: state and progress by stage."""
    with database(request) as session:
        record = find_job(session, job)
        run = session.get(CutoverRun, cutover_id)
        if run is None or run.job_id != record.id:
            raise not_found(f"cutover run {cutover_id} not found in job {record.name!r}")
        return _cutover_out(run)
