"""The cutover service the CLI and the API call: plan, start, resume, roll back, report.

``plan_cutover`` finds the pairing of a job's source, completes the plan (a random new
name for the source when none is given) and creates the pending run with its stages.
``drive_cutover`` runs or resumes it in this process with the transfer engine's final
delta (``EngineDeltaTransfer``); ``start_driver`` does the same in a detached
``sms cutover run|resume ID --wait`` process (what the API and ``run`` without ``--wait``
use), with the settings in its environment, never on its command line.
``cutover_status`` is the run as plain data: plan, stages with progress and message,
the final delta's record. ``EXIT_CODES`` maps outcomes to the CLI's exit codes.

Everything works on the job database of this process's settings (as the transfer engine
does). This module must never put a credential in a status, a log or a process argument.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.db import session_scope
from common.models import CutoverRun, Job, Pairing, RunState, Server
from common.settings import Settings, get_settings
from orchestrator.cutover.delta import EngineDeltaTransfer
from orchestrator.cutover.plan import DHCP, AddressMove, CutoverPlan
from orchestrator.cutover.stages import (
    STAGES,
    CutoverError,
    DeltaTransfer,
    create_cutover,
    rollback,
    run_cutover,
)

# 0: done as asked; 1: the cutover stopped at a failed stage, or a rollback is incomplete
# (resume or roll back); 2: refused (bad plan, unknown run, wrong state).
EXIT_CODES = {RunState.SUCCEEDED: 0, RunState.CANCELLED: 0, RunState.FAILED: 1}
STAGE_TITLES = dict(STAGES)


def random_source_name() -> str:
    """A new NetBIOS name for the source, as Windows makes them: ``SMS-`` and 8 random hex digits."""
    return f"SMS-{secrets.token_hex(4).upper()}"


def parse_move(text: str) -> AddressMove:
    """``ADDRESS/PREFIX:SOURCE_IF=DESTINATION_IF`` (e.g. ``198.18.5.21/24:eth0=eth1``) as a move."""
    try:
        network, interfaces = text.split(":", 1)
        source_interface, destination_interface = interfaces.split("=", 1)
        interface = ipaddress.ip_interface(network if "/" in network else f"{network}/32")
    except ValueError:
        raise CutoverError(f"address move {text!r} is not ADDRESS/PREFIX:SOURCE_IF=DESTINATION_IF "
                           "(e.g. 198.18.5.21/24:eth0=eth0)") from None
    if "/" not in network:
        raise CutoverError(f"address move {text!r} needs its prefix length (ADDRESS/PREFIX)")
    return AddressMove(str(interface.ip), interface.network.prefixlen, source_interface.strip(),
                       destination_interface.strip())


def parse_address(text: str) -> tuple[str, int]:
    """``ADDRESS/PREFIX`` as (address, prefix length); ``dhcp`` (any case) as ("dhcp", 0)."""
    if text.strip().lower() == DHCP:
        return DHCP, 0
    if "/" not in text:
        raise CutoverError(f"{text!r} needs its prefix length (ADDRESS/PREFIX, e.g. 198.18.5.31/24), "
                           "or give dhcp")
    try:
        interface = ipaddress.ip_interface(text)
    except ValueError:
        raise CutoverError(f"{text!r} is not ADDRESS/PREFIX, nor dhcp") from None
    return str(interface.ip), interface.network.prefixlen


def find_pairing(session: Session, job: Job, source: str, destination: str | None = None) -> Pairing:
    """The pairing of ``job`` whose source is named ``source`` (and destination, if given)."""
    servers = {server.name: server for server in session.scalars(select(Server).where(Server.job_id == job.id))}
    if source not in servers:
        raise CutoverError(f"job {job.name!r} has no server {source!r}")
    query = select(Pairing).where(Pairing.source_server_id == servers[source].id)
    if destination is not None:
        if destination not in servers:
            raise CutoverError(f"job {job.name!r} has no server {destination!r}")
        query = query.where(Pairing.destination_server_id == servers[destination].id)
    pairings = list(session.scalars(query.order_by(Pairing.id)))
    if not pairings:
        raise CutoverError(f"{source} is not paired with {destination or 'a destination'}: "
                           "use 'sms transfer pair' first")
    if len(pairings) > 1:
        raise CutoverError(f"{source} is paired with several destinations: name the --destination")
    return pairings[0]


def plan_cutover(session: Session, job: Job, source: str, *, destination: str | None,
                 addresses: list[AddressMove], new_address: str, new_prefix_length: int | None,
                 new_interface: str | None = None, new_name: str | None = None,
                 maintenance_hosts: list[str] | None = None, timeout_seconds: int = 3600,
                 override_reconciliation: bool = False, verify_files: int = 5) -> CutoverRun:
    """A pending cutover run of the source's pairing with a complete plan.

    ``new_address`` is a static IPv4 address (with ``new_prefix_length``) or ``dhcp``
    (no prefix length). ``new_name`` defaults to a random one; ``new_interface`` to the
    source interface of the first address that moves. Raises ``CutoverError`` when the
    plan is not valid.
    """
    if new_address.strip().lower() == DHCP:
        if new_prefix_length:
            raise CutoverError("the source's new address comes from DHCP: give no prefix length")
        new_address, new_prefix_length = DHCP, 0
    elif new_prefix_length is None:
        raise CutoverError(f"the source's new address {new_address} needs its prefix length (or use dhcp)")
    pairing = find_pairing(session, job, source, destination)
    interface = new_interface or (addresses[0].source_interface if addresses else "")
    plan = CutoverPlan(addresses=list(addresses), source_new_name=new_name or random_source_name(),
                       source_new_address=new_address, source_new_prefix_length=new_prefix_length,
                       source_new_interface=interface, timeout_seconds=timeout_seconds,
                       override_reconciliation=override_reconciliation, verify_files=verify_files,
                       **({"maintenance_hosts": list(maintenance_hosts)} if maintenance_hosts else {}))
    return create_cutover(session, pairing, plan)


def get_cutover(session: Session, run_id: int, job: Job | None = None) -> CutoverRun:
    """Cutover run ``run_id`` (of ``job`` when given); LookupError when there is none."""
    run = session.get(CutoverRun, run_id)
    if run is None or (job is not None and run.job_id != job.id):
        raise LookupError(f"no cutover run {run_id}" + (f" in job {job.name!r}" if job is not None else ""))
    return run


def cutover_status(session: Session, run_id: int) -> dict[str, Any]:
    """The run as plain data: state, error, plan, the source's new address, stages
    (progress, message), delta record."""
    run = get_cutover(session, run_id)
    pairing = session.get(Pairing, run.pairing_id)
    state = (run.options or {}).get("state") or {}
    plan = (run.options or {}).get("plan") or {}
    return {
        "id": run.id, "job_id": run.job_id, "pairing_id": run.pairing_id,
        "source": session.get(Server, pairing.source_server_id).name,
        "destination": session.get(Server, pairing.destination_server_id).name,
        "state": run.state.value, "error": run.error,
        "created_at": run.created_at, "started_at": run.started_at, "ended_at": run.ended_at,
        "plan": plan,
        "delta": state.get("delta"),
        # The static address planned, or the one DHCP gave the source (None until stage 4).
        "source_new_address": state.get("source_new_address") or (
            None if plan.get("source_new_address") == DHCP else plan.get("source_new_address")),
        "stages": [{"position": stage.position, "name": stage.name, "title": STAGE_TITLES.get(stage.name, ""),
                    "state": stage.state.value, "progress": stage.progress, "message": stage.message,
                    "started_at": stage.started_at, "ended_at": stage.ended_at}
                   for stage in sorted(run.stages, key=lambda stage: stage.position)],
    }


def check_can_drive(run_id: int, *, resume: bool, takeover: bool = False, url: str | None = None) -> None:
    """Refuse early, with the reason, what ``run_cutover`` would refuse (or ``run`` of a
    failed run, which is a resume, and ``resume`` of a run that never started)."""
    with session_scope(url) as session:
        run = get_cutover(session, run_id)
        state = run.state
    if state in (RunState.SUCCEEDED, RunState.CANCELLED):
        raise CutoverError(f"cutover run {run_id} is {state.value}: plan a new one")
    if state == RunState.RUNNING and not takeover:
        raise CutoverError(f"cutover run {run_id} is running; if the process driving it is gone, "
                           "resume with --takeover")
    if resume and state == RunState.PENDING:
        raise CutoverError(f"cutover run {run_id} has not started: run it")
    if not resume and state == RunState.FAILED:
        raise CutoverError(f"cutover run {run_id} failed: resume it or roll it back")


def drive_cutover(run_id: int, *, resume: bool = False, takeover: bool = False,
                  delta: DeltaTransfer | None = None, timeout_seconds: int | None = None) -> RunState:
    """Run (or resume) the cutover here until it succeeds or stops at a failed stage;
    ``timeout_seconds`` replaces the plan's timeout from this call on."""
    check_can_drive(run_id, resume=resume, takeover=takeover)
    return run_cutover(run_id, delta or EngineDeltaTransfer(), takeover=takeover, timeout_seconds=timeout_seconds)


def rollback_cutover(run_id: int, *, url: str | None = None) -> list[str]:
    """Roll the run back (see ``stages.rollback``); the steps that could not be done."""
    with session_scope(url) as session:
        state = get_cutover(session, run_id).state
    if state == RunState.CANCELLED:
        raise CutoverError(f"cutover run {run_id} was already rolled back or cancelled")
    if state == RunState.RUNNING:
        raise CutoverError(f"cutover run {run_id} is running: wait for it to stop at a stage first")
    return rollback(run_id, url=url)


def start_driver(run_id: int, *, resume: bool = False, takeover: bool = False, timeout_seconds: int | None = None,
                 settings: Settings | None = None,
                 environment: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    """Start a detached ``sms cutover run|resume ID --wait``; the process and its log file.

    ``settings`` (default: this process's) name the job database and the log directory;
    ``environment`` (their SMS_* variables) is added to this process's environment for it;
    nothing secret goes on its command line. The caller must wait for the process (or
    leave it to its session): it outlives the caller when the caller stops.
    """
    settings = settings or get_settings()
    check_can_drive(run_id, resume=resume, takeover=takeover, url=settings.database_url)
    logs = settings.ensure_state_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"cutover-{run_id}.log"
    argv = [sys.executable, "-m", "orchestrator.cli", "cutover", "resume" if resume else "run", str(run_id),
            "--wait"]
    if takeover:
        argv.append("--takeover")
    if timeout_seconds is not None:
        argv += ["--timeout", str(int(timeout_seconds))]
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, env={**os.environ, **(environment or {})})
    return process, log
