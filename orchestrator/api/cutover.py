"""Cutover endpoints under ``/api/jobs/{job}/cutovers``: plan, start, resume, roll back, status.

Each is a thin call of ``orchestrator.cutover.service``. ``POST .../cutovers`` plans a run
(pending); ``start`` and ``resume`` hand it to a detached ``sms cutover run|resume ID
--wait`` process started with the API's settings in its environment (never on its
command line) and answer 202 at once: follow it with ``GET .../status``. ``rollback``
runs in the request and answers with the run's status and what could not be undone.
The run lists and the plain ``GET .../cutovers/{id}`` stay in ``routes.py``.

A refused plan is a 400, a run in the wrong state a 409, an unknown job or run a 404.
This module must never put a credential in a response, a log line or a process argument.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from common.models import Job
from common.settings import Settings
from orchestrator.api.routes import database, find_job, not_found, settings_environment
from orchestrator.cutover.plan import AddressMove
from orchestrator.cutover.service import (
    cutover_status,
    get_cutover,
    plan_cutover,
    rollback_cutover,
    start_driver,
)
from orchestrator.cutover.stages import CutoverError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/jobs/{job}/cutovers", tags=["cutover"])


class AddressMoveIn(BaseModel):
    """An address of the source that moves to an interface of the destination."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(description="IPv4 address users reach the source at.")
    prefix_length: int = Field(ge=1, le=32)
    source_interface: str = Field(min_length=1)
    destination_interface: str = Field(min_length=1)


class CutoverIn(BaseModel):
    """The plan of a cutover of one source (its pairing is found by the source's name)."""

    model_config = ConfigDict(extra="forbid")

    source: str
    destination: str | None = Field(None, description="Needed when the source has several pairings.")
    addresses: list[AddressMoveIn] = Field(min_length=1)
    source_new_name: str | None = Field(None, description="Default: a random name, SMS-XXXXXXXX.")
    source_new_address: str = Field(description="Static IPv4 address, or \"dhcp\": leased at cutover.")
    source_new_prefix_length: int | None = Field(None, ge=1, le=32,
                                                 description="Needed for a static address; none with dhcp.")
    source_new_interface: str | None = Field(None, description="Default: the first move's source interface.")
    maintenance_hosts: list[str] = Field(default_factory=list,
                                         description="Hosts still allowed on the source's shares (Samba).")
    timeout_seconds: int = Field(3600, gt=0)
    override_reconciliation: bool = False
    verify_files: int = Field(5, ge=0)


class ResumeIn(BaseModel):
    """Options of a resume."""

    model_config = ConfigDict(extra="forbid")

    takeover: bool = Field(False, description="Take over a run whose driving process is gone.")
    timeout_seconds: int | None = Field(None, gt=0, description="Replaces the plan's timeout from this resume on.")


class StageStatusOut(BaseModel):
    """One stage: state, progress 0..1 and its last message."""

    position: int
    name: str
    title: str
    state: str
    progress: float
    message: str
    started_at: datetime | None
    ended_at: datetime | None


class CutoverStatusOut(BaseModel):
    """A cutover run: its plan, state, stages and the final delta's record."""

    id: int
    job_id: int
    pairing_id: int
    source: str
    destination: str
    state: str
    error: str
    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    plan: dict[str, Any]
    source_new_address: str | None = Field(None, description="Planned static address, or the one DHCP leased.")
    delta: dict[str, Any] | None
    stages: list[StageStatusOut]


class CutoverStartedOut(BaseModel):
    """A run handed to its driver process."""

    cutover: CutoverStatusOut
    driver_pid: int
    driver_log: str


class RollbackOut(BaseModel):
    """A run after a rollback, and the steps that could not be done (empty: complete)."""

    cutover: CutoverStatusOut
    failures: list[str]


def _status_of(request: Request, job: str, cutover_id: int) -> dict[str, Any]:
    with database(request) as session:
        record = find_job(session, job)
        try:
            get_cutover(session, cutover_id, record)
        except LookupError as exc:
            raise not_found(str(exc)) from None
        return cutover_status(session, cutover_id)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CutoverStatusOut,
             summary="Plan a cutover of a source (a pending run; start it with .../start)")
def create_cutover_endpoint(job: str, body: CutoverIn, request: Request):
    """Plan a cutover of a source (a pending run; start it with .../start)."""
    with database(request) as session:
        record: Job = find_job(session, job)
        try:
            run = plan_cutover(
                session, record, body.source, destination=body.destination,
                addresses=[AddressMove(**move.model_dump()) for move in body.addresses],
                new_address=body.source_new_address, new_prefix_length=body.source_new_prefix_length,
                new_interface=body.source_new_interface, new_name=body.source_new_name,
                maintenance_hosts=body.maintenance_hosts, timeout_seconds=body.timeout_seconds,
                override_reconciliation=body.override_reconciliation, verify_files=body.verify_files)
        except CutoverError as exc:
            code = status.HTTP_409_CONFLICT if "not finished" in str(exc) else status.HTTP_400_BAD_REQUEST
            raise HTTPException(code, str(exc)) from None
        return cutover_status(session, run.id)


def _hand_to_driver(request: Request, job: str, cutover_id: int, *, resume: bool, takeover: bool,
                    timeout_seconds: int | None = None):
    _status_of(request, job, cutover_id)
    settings: Settings = request.app.state.settings
    try:
        process, log = start_driver(cutover_id, resume=resume, takeover=takeover, timeout_seconds=timeout_seconds,
                                    settings=settings,
                                    environment=settings_environment(settings))
    except CutoverError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    threading.Thread(target=process.wait, name=f"cutover-{process.pid}", daemon=True).start()
    logger.info("cutover run %s handed to driver pid %s (log %s)", cutover_id, process.pid, log)
    return {"cutover": _status_of(request, job, cutover_id), "driver_pid": process.pid, "driver_log": str(log)}


@router.post("/{cutover_id}/start", status_code=status.HTTP_202_ACCEPTED, response_model=CutoverStartedOut,
             summary="Start a planned cutover (driven in the background; follow .../status)")
def start_cutover(job: str, cutover_id: int, request: Request):
    """Start a planned cutover (driven in the background; follow .../status)."""
    return _hand_to_driver(request, job, cutover_id, resume=False, takeover=False)


@router.post("/{cutover_id}/resume", status_code=status.HTTP_202_ACCEPTED, response_model=CutoverStartedOut,
             summary="Resume a failed cutover at its failed stage (in the background)")
def resume_cutover(job: str, cutover_id: int, request: Request, body: ResumeIn | None = None):
    """Resume a failed cutover at its failed stage (in the background)."""
    options = body or ResumeIn()
    return _hand_to_driver(request, job, cutover_id, resume=True, takeover=options.takeover,
                           timeout_seconds=options.timeout_seconds)


@router.post("/{cutover_id}/rollback", response_model=RollbackOut,
             summary="Give the source back its name, addresses and share access")
def rollback_cutover_endpoint(job: str, cutover_id: int, request: Request):
    """Give the source back its name, addresses and share access."""
    _status_of(request, job, cutover_id)
    try:
        failures = rollback_cutover(cutover_id, url=request.app.state.settings.database_url)
    except CutoverError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return {"cutover": _status_of(request, job, cutover_id), "failures": failures}


@router.get("/{cutover_id}/status", response_model=CutoverStatusOut,
            summary="A cutover run: plan, state, each stage's progress and message, the delta's record")
def cutover_status_endpoint(job: str, cutover_id: int, request: Request):
    """A cutover run: plan, state, each stage's progress and message, the delta's record."""
    return _status_of(request, job, cutover_id)
