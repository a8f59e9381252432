"""The cutover stage machine: the destination takes over the source's identity.

A cutover run (``CutoverRun``) of one pairing goes through seven stages, each stored as a
``CutoverStage`` row with its state, progress and last message (what the CLI and UI show):

1. ``preflight`` - both hosts reachable; the latest transfer run reconciles clean
   (``orchestrator.transfer.reconcile.cutover_allowed``); the plan fits the hosts
   (addresses on the right interfaces, management addresses not among those that move);
   the source's new address is free (duplicate address detection); the destination
   holds every share;
2. ``final_delta_transfer`` - the source's shares become read-only (users still read,
   nobody writes), then the final delta transfer runs;
3. ``delta_reconciliation`` - that delta must reconcile clean;
4. ``source_identity`` - the source's shares go into maintenance, it takes its new
   name and its new address (static, or leased from a DHCP server and recorded in the
   run's state), and gives up the addresses that move;
5. ``destination_identity`` - the destination takes those addresses (announced by
   gratuitous ARP) and the source's old name; its shares must be available;
6. ``verification`` - at each old address the server answers with the old name
   (srvsvc NetrServerGetInfo) and every share lists and reads back files in full; the
   source answers with its new name at its new address;
7. ``done``.

``run_cutover`` runs from the first stage that has not succeeded, so after a failure
(recorded on its stage with the reason) a second call resumes there. The plan's
``timeout_seconds`` bounds each call, the final delta transfer included (it gets the
call's deadline and stops dispatching when it passes). Every step is
idempotent (it looks before it acts). ``rollback`` gives the source back its name,
addresses and share access and releases them from the destination; a failing pre-flight
rolls back automatically.

The final delta transfer and its reconciliation are the transfer engine's: they are
called through the ``DeltaTransfer`` protocol, passed in by the caller
(``orchestrator.cutover.delta.EngineDeltaTransfer`` in production).

This module must never delete a file on either server, and never put a credential in a
message, an event or the run's stored options (only names, addresses and ids go there).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select, update

from common.db import session_scope
from common.models import (
    CutoverRun,
    CutoverStage,
    EventLevel,
    JobState,
    Pairing,
    RunState,
    Server,
    ServerKind,
    Share,
    TransferRun,
    utcnow,
)
from orchestrator.cutover.plan import MAINTENANCE, NORMAL, READ_ONLY, CutoverPlan
from orchestrator.cutover.verify import verify_share, verify_server_name
from orchestrator.jobs import advance_job, record_event, server_password
from orchestrator.transfer.reconcile import cutover_allowed, reconcile

STAGES: tuple[tuple[str, str], ...] = (
    ("preflight", "Pre-flight checks"),
    ("final_delta_transfer", "Final delta transfer, source read-only"),
    ("delta_reconciliation", "Reconciliation of the delta"),
    ("source_identity", "Source: maintenance, new name, new address"),
    ("destination_identity", "Destination: takes the addresses and the name"),
    ("verification", "Verification at the old address"),
    ("done", "Done"),
)
FINISHED_TRANSFER_STATES = (RunState.SUCCEEDED, RunState.COMPLETED_WITH_ERRORS)


class CutoverError(Exception):
    """A cutover cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class CutoverPairing:
    """What a delta transfer needs to know about the pairing being cut over."""

    pairing_id: int
    job_id: int
    source_server_id: int
    destination_server_id: int
    shares: tuple[str, ...]


@dataclass(frozen=True)
class DeltaReconciliation:
    """The verdict on the final delta: clean or not, and a message for the administrator."""

    clean: bool
    message: str


class DeltaTransfer(Protocol):
    """The transfer engine's part of a cutover (stages 2 and 3).

    ``run`` copies what changed since the last transfer (the source's shares are already
    read-only) and returns a JSON-able record of what ran (e.g. the transfer run's id);
    it is stored with the cutover run, so ``reconcile`` gets it even after a resume.
    ``deadline`` (``time.monotonic()`` clock) is the cutover call's limit: past it the
    transfer must stop and ``run`` raise ``CutoverError`` saying so.
    """

    def run(self, pairing: CutoverPairing, deadline: float) -> dict[str, Any]:
        """Run the final delta transfer within ``deadline``; a JSON-able record of it."""

    def reconcile(self, pairing: CutoverPairing, record: dict[str, Any]) -> DeltaReconciliation:
        """Whether the delta ``record`` describes reconciles clean."""


class CutoverHost(Protocol):
    """The operations the stages use on a server (``SambaCutoverHost``, ``WindowsCutoverHost``)."""

    name: str
    management_address: str

    def addresses(self) -> dict[str, list[tuple[str, int]]]: ...
    def has_address(self, address: str) -> bool: ...
    def add_address(self, interface: str, address: str, prefix_length: int) -> None: ...
    def remove_address(self, interface: str, address: str, prefix_length: int) -> None: ...
    def address_free(self, interface: str, address: str) -> bool: ...
    def dhcp_client_problem(self, interface: str) -> str | None: ...
    def obtain_dhcp_address(self, interface: str) -> tuple[str, int]: ...
    def release_dhcp_address(self, interface: str) -> None: ...
    def netbios_name(self) -> str: ...
    def rename(self, name: str, tag: str) -> None: ...
    def undo_rename(self, original: str, tag: str) -> None: ...
    def share_names(self) -> set[str]: ...
    def share_available(self, share: str) -> bool: ...
    def share_snapshot(self, shares: list[str]) -> dict[str, Any]: ...
    def set_share_access(self, shares: list[str], mode: str, tag: str, allowed_hosts: list[str] | None = None,
                         snapshot: dict[str, Any] | None = None) -> None: ...
    def close(self) -> None: ...


HostConnector = Callable[[Server], CutoverHost]


def connect_host(server: Server) -> CutoverHost:
    """The cutover operations for a stored server, over SSH (Samba) or WinRM (Windows)."""
    management = server.management or {}
    if server.kind is ServerKind.SAMBA:
        from orchestrator.cutover.samba import SambaCutoverHost
        from orchestrator.hosts.samba_ssh import SambaSshHost
        from orchestrator.jobs import management_secret

        ssh = SambaSshHost(
            management.get("ssh_host") or server.address,
            username=management["ssh_user"],
            known_hosts=management["known_hosts"],
            port=management.get("ssh_port") or 22,
            password=management_secret(server, "ssh_password"),
            key_filename=management.get("key_file"),
            smb_conf=management.get("smb_conf"),
        )
        return SambaCutoverHost(ssh, server.name)
    if server.kind is ServerKind.WINDOWS:
        from orchestrator.cutover.windows import WindowsCutoverHost

        return WindowsCutoverHost.for_server(server)
    raise CutoverError(f"server {server.name!r} has no management access (smb-only): "
                       "cutover needs SSH (Samba) or WinRM (Windows)")


def tag_of(run_id: int) -> str:
    """The marker a run leaves on what it changes (smb.conf lines)."""
    return f"run-{run_id}"


# --- creating a run ---------------------------------------------------------------------

def create_cutover(session, pairing: Pairing, plan: CutoverPlan) -> CutoverRun:
    """A new pending cutover run of ``pairing`` with its seven stages.

    Refused when the plan has problems or another cutover of the pairing is pending,
    running or failed (resume or roll that one back first).
    """
    problems = plan.problems()
    if problems:
        raise CutoverError("the cutover plan is not valid: " + "; ".join(problems))
    active = session.scalar(select(CutoverRun.id).where(
        CutoverRun.pairing_id == pairing.id,
        CutoverRun.state.in_((RunState.PENDING, RunState.RUNNING, RunState.FAILED))))
    if active is not None:
        raise CutoverError(f"cutover run {active} of this pairing is not finished: resume it or roll it back")
    run = CutoverRun(job_id=pairing.job_id, pairing_id=pairing.id, state=RunState.PENDING,
                     options={"plan": plan.to_json(), "state": {}})
    session.add(run)
    session.flush()
    advance_job(session, pairing.job_id, JobState.CUTOVER)
    for position, (name, _title) in enumerate(STAGES, start=1):
        session.add(CutoverStage(cutover_run_id=run.id, position=position, name=name, state=RunState.PENDING))
    record_event(session, "cutover.created", f"cutover run {run.id} created", job_id=pairing.job_id,
                 detail={"cutover_run_id": run.id, "pairing_id": pairing.id})
    session.flush()
    return run


# --- running -----------------------------------------------------------------------------

class _Context:
    """One call of ``run_cutover`` or ``rollback``: the plan, the recorded state, the hosts."""

    def __init__(self, run_id: int, url: str | None, connect: HostConnector):
        self.run_id = run_id
        self.url = url
        self.tag = tag_of(run_id)
        self._connect = connect
        self._hosts: dict[str, CutoverHost] = {}
        self.stage_id: int | None = None
        self.delta: DeltaTransfer | None = None
        self.deadline = float("inf")
        with session_scope(url) as session:
            run = session.get(CutoverRun, run_id)
            if run is None:
                raise CutoverError(f"no cutover run {run_id}")
            pairing = session.get(Pairing, run.pairing_id)
            self.plan = CutoverPlan.from_json(run.options["plan"])
            self.state: dict[str, Any] = dict(run.options.get("state") or {})
            self.job_id = run.job_id
            self.source_server = session.get(Server, pairing.source_server_id)
            self.destination_server = session.get(Server, pairing.destination_server_id)
            session.expunge(self.source_server)
            session.expunge(self.destination_server)
            shares = list(pairing.shares) or list(session.scalars(
                select(Share.name).where(Share.server_id == pairing.source_server_id).order_by(Share.name)))
            self.pairing = CutoverPairing(pairing.id, pairing.job_id, pairing.source_server_id,
                                          pairing.destination_server_id, tuple(shares))

    @property
    def shares(self) -> list[str]:
        return list(self.pairing.shares)

    def host(self, role: str) -> CutoverHost:
        """The source's or destination's operations, connected on first use."""
        if role not in self._hosts:
            server = self.source_server if role == "source" else self.destination_server
            self._hosts[role] = self._connect(server)
        return self._hosts[role]

    @property
    def source(self) -> CutoverHost:
        return self.host("source")

    @property
    def destination(self) -> CutoverHost:
        return self.host("destination")

    def save_state(self) -> None:
        """Store what the run has learnt or done (names, record of the delta ...)."""
        with session_scope(self.url) as session:
            run = session.get(CutoverRun, self.run_id)
            run.options = {**run.options, "state": dict(self.state)}

    @property
    def source_new_address(self) -> str:
        """The source's new address: the plan's static one, or the one leased by DHCP
        (recorded at stage 4; "DHCP" until then)."""
        if self.plan.source_new_address_by_dhcp:
            return self.state.get("source_new_address") or "DHCP"
        return self.plan.source_new_address

    @property
    def source_new_prefix_length(self) -> int:
        """The prefix length of ``source_new_address``."""
        if self.plan.source_new_address_by_dhcp:
            return int(self.state.get("source_new_prefix_length") or 0)
        return self.plan.source_new_prefix_length

    def check_deadline(self) -> None:
        """Stop (CutoverError) once this call has lasted longer than the plan's timeout."""
        if time.monotonic() > self.deadline:
            raise CutoverError(f"cutover timed out (limit {self.plan.timeout_seconds} s per run); resume to go on")

    def step(self, progress: float, message: str) -> None:
        """Record the current stage's progress and message; stop when the time is up."""
        self.check_deadline()
        with session_scope(self.url) as session:
            stage = session.get(CutoverStage, self.stage_id)
            stage.progress = progress
            stage.message = message

    def close(self) -> None:
        for host in self._hosts.values():
            try:
                host.close()
            except Exception:  # closing must not hide the run's own outcome
                pass
        self._hosts.clear()


def run_cutover(run_id: int, delta: DeltaTransfer, *, connect: HostConnector = connect_host,
                url: str | None = None, takeover: bool = False, timeout_seconds: int | None = None) -> RunState:
    """Run cutover ``run_id`` from its first unfinished stage; returns the run's new state.

    A stage that fails is marked failed with the reason and the run stops (FAILED); call
    again to resume there. A failing pre-flight rolls back automatically. A succeeded or
    rolled-back run is refused, and so is a running one unless ``takeover`` says the
    process that ran it is gone (one process drives a cutover at a time).
    ``timeout_seconds`` replaces the plan's timeout from this call on (stored in the plan),
    e.g. to resume a run whose final delta needed more time than planned.
    """
    if timeout_seconds is not None and timeout_seconds <= 0:
        raise CutoverError("the timeout must be positive")
    context = _Context(run_id, url, connect)
    context.delta = delta
    with session_scope(url) as session:
        run = session.get(CutoverRun, run_id)
        if run.state in (RunState.SUCCEEDED, RunState.CANCELLED):
            raise CutoverError(f"cutover run {run_id} is {run.state.value}: start a new one")
        if run.state == RunState.RUNNING and not takeover:
            raise CutoverError(f"cutover run {run_id} is running; if the process driving it is gone, "
                               "resume with takeover")
        resumed = run.state == RunState.FAILED
        # Conditional, so that two processes started at once can never both drive the run.
        taken = session.execute(update(CutoverRun).where(CutoverRun.id == run_id, CutoverRun.state == run.state)
                                .values(state=RunState.RUNNING).execution_options(synchronize_session=False))
        if taken.rowcount != 1:
            raise CutoverError(f"cutover run {run_id} was just taken by another process")
        run.state = RunState.RUNNING
        if timeout_seconds is not None:
            context.plan.timeout_seconds = timeout_seconds
            run.options = {**run.options, "plan": context.plan.to_json()}
        run.started_at = run.started_at or utcnow()
        run.ended_at = None
        run.error = ""
        record_event(session, "cutover.resumed" if resumed else "cutover.started",
                     f"cutover run {run_id} {'resumed' if resumed else 'started'}", job_id=run.job_id,
                     detail={"cutover_run_id": run_id})
        todo = [(stage.id, stage.name) for stage in run.stages if stage.state != RunState.SUCCEEDED]
    context.deadline = time.monotonic() + context.plan.timeout_seconds
    try:
        for stage_id, name in todo:
            context.stage_id = stage_id
            _mark_stage(context, RunState.RUNNING, 0.0, "started")
            try:
                message = STAGE_FUNCTIONS[name](context)
            except Exception as exc:  # every failure stops the run at its stage, with the reason
                reason = _reason(exc)
                _mark_stage(context, RunState.FAILED, None, reason)
                _finish_run(context, RunState.FAILED, f"stage {name} failed: {reason}", EventLevel.ERROR,
                            "cutover.failed")
                if name == "preflight":
                    _rollback(context, "pre-flight failed", operator=False)
                return RunState.FAILED
            _mark_stage(context, RunState.SUCCEEDED, 1.0, message)
        _finish_run(context, RunState.SUCCEEDED, "", EventLevel.INFO, "cutover.succeeded")
        return RunState.SUCCEEDED
    finally:
        context.close()


def _reason(exc: Exception) -> str:
    if isinstance(exc, CutoverError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _mark_stage(context: _Context, state: RunState, progress: float | None, message: str) -> None:
    with session_scope(context.url) as session:
        stage = session.get(CutoverStage, context.stage_id)
        stage.state = state
        stage.message = message
        if progress is not None:
            stage.progress = progress
        if state == RunState.RUNNING:
            stage.started_at = utcnow()
            stage.ended_at = None
        else:
            stage.ended_at = utcnow()
        if state == RunState.FAILED:
            level, kind = EventLevel.ERROR, "cutover.stage_failed"
        elif state == RunState.SUCCEEDED:
            level, kind = EventLevel.INFO, "cutover.stage_succeeded"
        else:
            level, kind = EventLevel.INFO, "cutover.stage_started"
        record_event(session, kind, f"cutover run {context.run_id}, stage {stage.name}: {message}",
                     job_id=context.job_id, level=level,
                     detail={"cutover_run_id": context.run_id, "stage": stage.name})


def _finish_job_when_every_source_cut_over(session, job_id: int) -> None:
    """The job is done once each of its pairings has a cutover that succeeded."""
    pairings = set(session.scalars(select(Pairing.id).where(Pairing.job_id == job_id)))
    cut_over = set(session.scalars(select(CutoverRun.pairing_id).where(
        CutoverRun.job_id == job_id, CutoverRun.state == RunState.SUCCEEDED)))
    if pairings and pairings <= cut_over:
        advance_job(session, job_id, JobState.DONE)


def _finish_run(context: _Context, state: RunState, error: str, level: EventLevel, kind: str) -> None:
    with session_scope(context.url) as session:
        run = session.get(CutoverRun, context.run_id)
        run.state = state
        run.error = error
        run.ended_at = utcnow()
        if state == RunState.SUCCEEDED:
            session.flush()
            _finish_job_when_every_source_cut_over(session, context.job_id)
        record_event(session, kind, f"cutover run {context.run_id}: {error or state.value}",
                     job_id=context.job_id, level=level, detail={"cutover_run_id": context.run_id})


# --- the stages ----------------------------------------------------------------------------

def _resolve(host: str) -> set[str]:
    """The IPv4 addresses a management host name stands for (itself if an address)."""
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None, socket.AF_INET)}
    except socket.gaierror:
        return {host}


def _stage_preflight(context: _Context) -> str:
    plan, source, destination = context.plan, context.source, context.destination
    context.step(0.05, "connecting to both hosts")
    source_addresses = source.addresses()
    destination_addresses = destination.addresses()
    context.state.setdefault("source_name", source.netbios_name())
    context.state.setdefault("destination_name", destination.netbios_name())
    context.state.setdefault("source_smb_address", context.source_server.address)
    context.save_state()

    context.step(0.25, "checking the last transfer's reconciliation")
    with session_scope(context.url) as session:
        last = session.scalar(select(TransferRun).where(
            TransferRun.pairing_id == context.pairing.pairing_id,
            TransferRun.state.in_(FINISHED_TRANSFER_STATES)).order_by(TransferRun.id.desc()))
        if last is None:
            raise CutoverError("no transfer run of this pairing has finished: transfer the data first")
        if not cutover_allowed(session, last.id, override=plan.override_reconciliation):
            dirty = [s for s in reconcile(session, last.id).shares if not s.clean]
            detail = "; ".join(f"{s.share}: {s.missing} missing, {s.mismatched} mismatched, {s.failed} failed, "
                               f"{s.walk_errors} walk errors" for s in dirty) or "run did not finish"
            raise CutoverError(f"transfer run {last.id} does not reconcile clean ({detail}): "
                               "transfer again, or override if the loss is accepted")
        transfer_run_id = last.id

    context.step(0.45, "checking the plan against both hosts")
    problems = []
    moving = {move.address for move in plan.addresses}
    for move in plan.addresses:
        if (move.address, move.prefix_length) not in source_addresses.get(move.source_interface, []):
            problems.append(f"the source has no {move.address}/{move.prefix_length} on {move.source_interface}")
        if move.destination_interface not in destination_addresses:
            problems.append(f"the destination has no interface {move.destination_interface}")
        if destination.has_address(move.address):
            problems.append(f"the destination already holds {move.address}")
    for role, host in (("source", source), ("destination", destination)):
        if _resolve(host.management_address) & moving:
            problems.append(f"the {role} is managed through {host.management_address}, an address that moves: "
                            "give it a management address that stays")
    if plan.source_new_interface not in source_addresses:
        problems.append(f"the source has no interface {plan.source_new_interface}")
    if plan.source_new_address_by_dhcp:
        dhcp_problem = source.dhcp_client_problem(plan.source_new_interface)
        if dhcp_problem:
            problems.append(f"the source cannot get its new address by DHCP: {dhcp_problem}")
    elif source.has_address(plan.source_new_address) or destination.has_address(plan.source_new_address):
        problems.append(f"the source's new address {plan.source_new_address} is already on a server of the pairing")
    if plan.source_new_name.upper() == context.state["source_name"].upper():
        problems.append(f"the source's new name {plan.source_new_name} is its current name")
    if problems:
        raise CutoverError("the plan does not fit the hosts: " + "; ".join(problems))

    if not plan.source_new_address_by_dhcp:  # a DHCP server hands out free addresses itself
        context.step(0.65, f"checking that {plan.source_new_address} is free")
        if not source.address_free(plan.source_new_interface, plan.source_new_address):
            raise CutoverError(f"{plan.source_new_address} answers on the source's network: "
                               "choose a free address for the source")

    context.step(0.85, "checking the destination's shares")
    present = {name.lower() for name in destination.share_names()}
    missing = [share for share in context.shares if share.lower() not in present]
    if missing:
        raise CutoverError(f"the destination lacks the shares {', '.join(missing)}: transfer creates them")
    context.state.setdefault("source_share_snapshot", source.share_snapshot(context.shares))
    context.save_state()
    new_address = ("a DHCP client is on the source" if plan.source_new_address_by_dhcp
                   else f"{plan.source_new_address} is free")
    return (f"both hosts reachable; transfer run {transfer_run_id} reconciles clean; plan fits; "
            f"{new_address}; destination holds {len(context.shares)} share(s)")


def _stage_final_delta(context: _Context) -> str:
    context.step(0.1, "making the source's shares read-only")
    _flag(context, "source_shares_changed")
    context.source.set_share_access(context.shares, READ_ONLY, context.tag,
                                    snapshot=context.state.get("source_share_snapshot"))
    context.step(0.2, "source shares read-only; final delta transfer running")
    record = context.delta.run(context.pairing, context.deadline)
    context.state["delta"] = dict(record or {})
    context.save_state()
    return f"source shares read-only; final delta transfer done {context.state['delta']}"


def _stage_delta_reconciliation(context: _Context) -> str:
    context.step(0.1, "reconciling the final delta")
    result = context.delta.reconcile(context.pairing, context.state.get("delta", {}))
    if not result.clean:
        raise CutoverError(f"the final delta does not reconcile clean: {result.message}")
    return f"final delta reconciles clean: {result.message}"


def _stage_source_identity(context: _Context) -> str:
    plan, source = context.plan, context.source
    context.step(0.1, "putting the source's shares into maintenance")
    _flag(context, "source_shares_changed")
    source.set_share_access(context.shares, MAINTENANCE, context.tag, allowed_hosts=plan.maintenance_hosts,
                            snapshot=context.state.get("source_share_snapshot"))
    context.step(0.35, f"renaming the source to {plan.source_new_name}")
    _flag(context, "source_renamed")
    source.rename(plan.source_new_name, context.tag)
    _flag(context, "source_new_address_added")
    if plan.source_new_address_by_dhcp:
        context.step(0.6, f"the source asks DHCP for its new address on {plan.source_new_interface}")
        address, prefix_length = source.obtain_dhcp_address(plan.source_new_interface)
        if address in {move.address for move in plan.addresses}:
            raise CutoverError(f"the DHCP server gave the source {address}, an address that moves to the "
                               "destination: fix the DHCP server's range, then resume or roll back")
        context.state.update(source_new_address=address, source_new_prefix_length=prefix_length)
        context.save_state()
    else:
        context.step(0.6, f"giving the source its new address {plan.source_new_address}")
        source.add_address(plan.source_new_interface, plan.source_new_address, plan.source_new_prefix_length)
    for move in plan.addresses:
        context.step(0.8, f"removing {move.address} from the source")
        _flag(context, "source_addresses_removed")
        source.remove_address(move.source_interface, move.address, move.prefix_length)
    if context.source_server.address in {move.address for move in plan.addresses}:
        _flag(context, "source_smb_address_changed")
        _set_server_address(context, context.source_server.id, context.source_new_address)
    how = " (DHCP)" if plan.source_new_address_by_dhcp else ""
    return (f"source shares in maintenance; source is now {plan.source_new_name} at "
            f"{context.source_new_address}{how}; gave up {', '.join(m.address for m in plan.addresses)}")


def _stage_destination_identity(context: _Context) -> str:
    destination = context.destination
    old_name = context.state["source_name"]
    for move in context.plan.addresses:
        context.step(0.2, f"adding {move.address} to the destination and announcing it")
        _flag(context, "destination_addresses_added")
        destination.add_address(move.destination_interface, move.address, move.prefix_length)
    context.step(0.6, f"renaming the destination to {old_name}")
    _flag(context, "destination_renamed")
    destination.rename(old_name, context.tag)
    context.step(0.85, "checking the destination's shares are available")
    unavailable = [share for share in context.shares if not destination.share_available(share)]
    if unavailable:
        raise CutoverError(f"the destination does not serve {', '.join(unavailable)}")
    return (f"destination is {old_name} at {', '.join(m.address for m in context.plan.addresses)}; "
            f"{len(context.shares)} share(s) available")


def _stage_verification(context: _Context) -> str:
    old_name = context.state["source_name"]
    server = context.destination_server
    password = server_password(server)
    read_files = read_bytes = 0
    for move in context.plan.addresses:
        context.step(0.1, f"asking {move.address} for its name")
        verify_server_name(move.address, old_name, server.username, password, port=server.port or 445)
        for share in context.shares:
            context.step(0.5, f"reading files of \\\\{move.address}\\{share}")
            files, size = verify_share(move.address, share, server.username, password,
                                       sample=context.plan.verify_files, port=server.port or 445)
            read_files += files
            read_bytes += size
    source, new_address = context.source_server, context.source_new_address
    context.step(0.9, f"asking the source at {new_address} for its name")
    verify_server_name(new_address, context.plan.source_new_name, source.username, server_password(source),
                       port=source.port or 445)
    return (f"{', '.join(m.address for m in context.plan.addresses)} answer as {old_name}; "
            f"{len(context.shares)} share(s) reachable; {read_files} file(s), {read_bytes} bytes read back; "
            f"the source answers as {context.plan.source_new_name} at {new_address}")


def _stage_done(context: _Context) -> str:
    return (f"cutover complete: {context.state['source_name']} is served by the destination; the source is "
            f"{context.plan.source_new_name} at {context.source_new_address}, shares in maintenance")


STAGE_FUNCTIONS: dict[str, Callable[[_Context], str]] = {
    "preflight": _stage_preflight,
    "final_delta_transfer": _stage_final_delta,
    "delta_reconciliation": _stage_delta_reconciliation,
    "source_identity": _stage_source_identity,
    "destination_identity": _stage_destination_identity,
    "verification": _stage_verification,
    "done": _stage_done,
}


def _set_server_address(context: _Context, server_id: int, address: str) -> None:
    with session_scope(context.url) as session:
        session.get(Server, server_id).address = address


# --- rollback ----------------------------------------------------------------------------------

def rollback(run_id: int, *, connect: HostConnector = connect_host, url: str | None = None,
             reason: str = "asked by the operator") -> list[str]:
    """Give the source back its name, addresses and share access; release the destination.

    Returns the steps that could not be done (empty when the rollback is complete). A
    complete rollback marks the run cancelled; otherwise it stays failed with the reasons,
    and rollback may be called again.
    """
    context = _Context(run_id, url, connect)
    try:
        return _rollback(context, reason, operator=True)
    finally:
        context.close()


def _attempt(failures: list[str], what: str, action: Callable[[], object]) -> bool:
    try:
        action()
        return True
    except Exception as exc:  # a rollback goes on with every other step, and reports this one
        failures.append(f"{what}: {_reason(exc)}")
        return False


def _flag(context: _Context, name: str) -> None:
    """Record, before acting, that the run is about to change something rollback must undo."""
    if not context.state.get(name):
        context.state[name] = True
        context.save_state()


def _rollback(context: _Context, reason: str, *, operator: bool) -> list[str]:
    """Undo what the run's flags say it did, destination first; returns what failed."""
    plan, state, tag = context.plan, context.state, context.tag
    failures: list[str] = []
    undone: list[str] = []
    released = {move.address for move in plan.addresses}
    if state.get("destination_addresses_added") or state.get("destination_renamed"):
        released = set()
        if _attempt(failures, "connect to the destination", lambda: context.destination.addresses()):
            destination = context.destination
            for move in plan.addresses:
                if state.get("destination_addresses_added"):
                    if _attempt(failures, f"remove {move.address} from the destination",
                                lambda m=move: destination.remove_address(m.destination_interface, m.address,
                                                                          m.prefix_length)):
                        released.add(move.address)
                elif not destination.has_address(move.address):
                    released.add(move.address)
                else:
                    failures.append(f"the destination holds {move.address}, which this cutover did not give it")
            undone.append("destination released the addresses")
            if state.get("destination_renamed") and _attempt(
                    failures, f"give the destination back its name {state['destination_name']}",
                    lambda: destination.undo_rename(state["destination_name"], tag)):
                undone.append(f"destination is {state['destination_name']} again")
    source_flags = ("source_shares_changed", "source_renamed", "source_new_address_added",
                    "source_addresses_removed")
    if any(state.get(flag) for flag in source_flags) and _attempt(
            failures, "connect to the source", lambda: context.source.addresses()):
        source = context.source
        restorable = all(move.address in released or source.has_address(move.address) for move in plan.addresses)
        if state.get("source_new_address_added") and plan.source_new_address_by_dhcp and restorable:
            # Released before the old addresses come back: Windows keeps no static address
            # on an interface while DHCP is enabled on it.
            if _attempt(failures, f"release the source's DHCP lease ({context.source_new_address})",
                        lambda: source.release_dhcp_address(plan.source_new_interface)):
                undone.append(f"source released its DHCP lease ({context.source_new_address})")
        for move in plan.addresses:
            if source.has_address(move.address):
                continue
            if move.address not in released:
                failures.append(f"{move.address} not given back to the source: the destination may still hold it")
            elif _attempt(failures, f"give {move.address} back to the source",
                          lambda m=move: source.add_address(m.source_interface, m.address, m.prefix_length)):
                undone.append(f"source has {move.address} again")
        if (state.get("source_new_address_added") and not plan.source_new_address_by_dhcp
                and all(source.has_address(m.address) for m in plan.addresses)):
            if _attempt(failures, f"remove {plan.source_new_address} from the source",
                        lambda: source.remove_address(plan.source_new_interface, plan.source_new_address,
                                                      plan.source_new_prefix_length)):
                undone.append(f"source gave up {plan.source_new_address}")
        if state.get("source_renamed") and _attempt(
                failures, f"give the source back its name {state['source_name']}",
                lambda: source.undo_rename(state["source_name"], tag)):
            undone.append(f"source is {state['source_name']} again")
        if state.get("source_shares_changed") and _attempt(
                failures, "restore the source's share access",
                lambda: source.set_share_access(context.shares, NORMAL, tag,
                                                snapshot=state.get("source_share_snapshot"))):
            undone.append("source shares writable again")
    if state.get("source_smb_address_changed") and not failures:
        _set_server_address(context, context.source_server.id, state["source_smb_address"])
    with session_scope(context.url) as session:
        run = session.get(CutoverRun, context.run_id)
        done = "; ".join(undone) or "nothing had changed"
        if failures:
            run.state = RunState.FAILED
            run.error = f"{run.error + '; ' if run.error else ''}rollback incomplete: " + "; ".join(failures)
            level, kind = EventLevel.ERROR, "cutover.rollback_incomplete"
        else:
            if operator:
                run.state = RunState.CANCELLED
            run.error = f"{run.error + '; ' if run.error else ''}rolled back ({reason}): {done}"
            level, kind = EventLevel.WARNING, "cutover.rolled_back"
        run.ended_at = utcnow()
        record_event(session, kind, f"cutover run {context.run_id}: {run.error}", job_id=context.job_id,
                     level=level, detail={"cutover_run_id": context.run_id, "failures": failures})
    return failures
