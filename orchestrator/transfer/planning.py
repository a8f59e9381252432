"""Transfer runs: pair servers, plan a run into batches while walking, drive it to the end.

A run of a pairing goes through these stages, all recorded in the job database:

0. **Accounts and shares** (manageable destinations only: Samba over SSH, Windows over
   WinRM): the source's local users and groups are created on the destination
   (orchestrator.transfer.principals, option ``migrate_principals``) and the resulting
   source SID -> destination SID map is stored (``SidMap``) for the proxy workers; then
   each chosen share is recreated on the destination with its settings and translated
   share permissions (orchestrator.transfer.shares, the pairing's path mapping). A share
   that cannot be recreated is left out of the run and recorded as an error. On an
   smb-only destination the share must already exist (a clear error otherwise).
1. **PreExistingData** (first run of a share for this pairing only): whatever the
   destination share's root holds is moved into ``PreExistingData`` (orchestrator.transfer
   .destination), never overwritten.
2. **Walk and dispatch**: the source share is walked with the pipelined walker
   (common.smb.walk.PipelinedWalker: several folders listed at once). Files are cut into
   batches bounded by ``settings.batch_max_files`` and ``settings.batch_max_bytes``, the
   first ones smaller (``FIRST_BATCH_FILES``, doubling) so that copying starts at once;
   each batch is written (a ``Batch`` row naming the ``copy_batch`` task and the
   destination's queue, and one ``FileRecord`` per file, state scanned) and committed,
   and only then published (common.db.after_commit through
   orchestrator.leases.dispatch_batch). Copying therefore starts while the walk goes on.
   Directories are recorded as they are met, without a batch yet. On a first run only
   the current batch and the walker's folders still to list are in memory. SMS's system
   folders at the share root (``SYSTEM_FOLDERS``) are not walked unless the options say
   so. On a **re-run** (the pairing has an earlier finished run of the share) the
   destination is listed in a thread beside the source walk and both are compared with
   that run's records (``_Baseline``): unchanged files are recorded by reference to the
   record that holds their details (``UnchangedFile``; read as ``skipped``) and never
   dispatched, and folders nobody changed, in which nothing is written or deleted, are
   recorded ``skipped``. Where both servers are Samba managed over SSH, every run reads
   their clocks first, and a re-run lists both shares on the hosts: folders those
   listings show unchanged since the records were made are recorded from the records,
   without any SMB listing (orchestrator.transfer.host_listing), compared with the
   folder digests the previous run kept; each such run keeps its own at its end.
3. **Wait** for every file batch to finish; meanwhile the lease reaper re-dispatches
   batches whose worker died or whose message was lost.
4. **Mirror** (re-runs only): destination entries that the source no longer has are
   deleted (found by the re-run's destination listing, or by walking the destination
   when there was none); PreExistingData and anything under a source directory the walk
   could not list are left alone.
5. **Directories**: directory records not recorded unchanged go out deepest first, in
   waves of batches (a level of more than a few folders split over parallel batches so
   that several workers share it, narrow levels merged into one batch), the share root
   last on its own, so a directory's times are set after everything inside it was
   written or deleted.
6. **Finish**: counters from the file records; the run ends ``succeeded`` or, when any
   file failed, went missing, or a directory could not be walked, ``completed_with_errors``
   (never hangs on a locked file: the worker records it failed and moves on).

A **maximum duration** (option ``max_duration``) stops the walk and all further
dispatching once exceeded; batches already running finish, batches still queued are
given up by the workers (each file recorded failed with ``MAX_DURATION_EXCEEDED``), and
the run ends ``completed_with_errors`` with the reason.

A run whose driver died can be **resumed** (``execute_run(..., resume=True)``, ``sms
transfer drive RUN``): finished batches stay finished, queued ones are published again,
running ones are re-leased by the reaper when their lease expires; shares already walked
are not walked again, a share walked in part is walked again without recording twice
what it already recorded.

This module must never put a credential in a message or a log, never publish a batch
before the transaction that wrote it has committed, and never import proxy_worker.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, case, delete, exists, func, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from common.celery_app import create_celery_app
from common.db import after_commit, bulk_insert_file_records, get_engine, insert_rows, session_scope
from common.endpoints import server_endpoint
from common.models import (
    ARRIVED_STATES,
    MAX_PATH_BYTES,
    PATH_TOO_LONG,
    Batch,
    BatchState,
    Event,
    EventLevel,
    FileRecord,
    FileState,
    FolderDigest,
    JobState,
    Pairing,
    RunState,
    Server,
    ServerRole,
    Share,
    SidMap,
    TransferRun,
    UnchangedFile,
    holds_verified_hash,
    path_too_long,
    run_records,
    utcnow,
)
from common.settings import get_settings
from common.smb import metadata as md
from common.smb.connection import SmbEndpoint, SmbTree, open_tree
from common.smb.copy import COMPARED_ATTRIBUTES
from common.smb.errors import SmbError, SmbFileError
from common.smb.fastpath import FastChannel
from common.smb.paths import UnsafePath, safe_relative_path
from common.smb.walk import DirEntry, PipelinedWalker, ShareWalker, WalkError
from common.transfer_options import SYSTEM_FOLDERS, TransferOptions
from orchestrator.jobs import advance_job
from orchestrator.leases import (
    Publisher,
    celery_publisher,
    dispatch_batch,
    reap_expired_leases,
)
from orchestrator.transfer import destination as dest_ops
from orchestrator.transfer import host_listing

# Host adapters (SSH, WinRM) are imported where the accounts-and-shares stage runs, so a
# driver for an smb-only pairing does not need their libraries.

logger = logging.getLogger(__name__)

COPY_TASK = "proxy_worker.copy_tasks.copy_batch"
# A share's first file batch holds at most this many files and each next one at most
# twice the one before, up to settings.batch_max_files: workers start copying after the
# first hundred files walked, not after the first full batch.
FIRST_BATCH_FILES = 100
DIRECTORY_BATCH_MAX = 2000
DIRECTORY_PARALLEL_MIN = 8
DIRECTORY_BATCH_MIN = 2
DIRECTORY_PARALLELISM = 8
# How often the driver looks whether a wave of directory batches has finished.
DIRECTORY_POLL_INTERVAL = 0.1
# Folders listed at once by the pipelined walks of the source and the destination.
WALK_DEPTH = 16
MIRROR_LOOKUP_CHUNK = 500
# How many source entries a re-run walks between looks for waiting folders it can now compare.
COMPARE_CHECK_EVERY = 256
# Unchanged files a re-run's planner hands to its recorder thread at once.
UNCHANGED_CHUNK = 5000
# Objects allocated between two collections of Python's youngest generation while a share
# is walked (Python's default: 700).
WALK_GC_THRESHOLD = 20_000
REAP_INTERVAL = 10.0
# How long the driver waits out an unreachable job database before the run fails.
DATABASE_OUTAGE_GRACE = 120.0

EVENT_PRE_EXISTING = "transfer.pre_existing_data"
EVENT_WALK_ERROR = "transfer.walk_error"
EVENT_MIRROR_DELETE = "transfer.mirror_delete"
EVENT_MIRROR_ERROR = "transfer.mirror_error"
EVENT_RUN_ERROR = "transfer.run_error"
EVENT_SHARE_PLANNED = "transfer.share_planned"
EVENT_SHARE_RECREATED = "transfer.share_recreated"
EVENT_SHARE_ERROR = "transfer.share_error"
EVENT_PRINCIPALS = "transfer.principals"
EVENT_MAX_DURATION = "transfer.max_duration"
EVENT_RESUMED = "transfer.resumed"
MAX_DURATION_CODE = "MAX_DURATION_EXCEEDED"
# Events that make a run "completed with errors".
ERROR_EVENTS = (EVENT_WALK_ERROR, EVENT_MIRROR_ERROR, EVENT_SHARE_ERROR, EVENT_MAX_DURATION)

FINISHED_RUN_STATES = (RunState.SUCCEEDED, RunState.COMPLETED_WITH_ERRORS, RunState.FAILED,
                       RunState.CANCELLED)


class TransferError(Exception):
    """A transfer run cannot be set up or driven (bad pairing, unknown share ...)."""


class RunCancelled(Exception):
    """The run was cancelled while it was being driven."""


class DurationExceeded(Exception):
    """The run's maximum duration has passed: nothing more is dispatched."""


def _check_cancelled(session: Session, run_id: int) -> None:
    if session.scalar(select(TransferRun.state).where(TransferRun.id == run_id)) == RunState.CANCELLED:
        raise RunCancelled(f"run {run_id} was cancelled")


# --- pairings and runs ----------------------------------------------------------------

def create_pairing(session: Session, source: Server, destination: Server,
                   shares: Iterable[str] = (), path_mapping: dict[str, Any] | None = None) -> Pairing:
    """Pair ``source`` with ``destination`` (same job, right roles) for the given shares.

    An empty ``shares`` means every share the inventory found on the source. Pairing the
    same two servers again updates the chosen shares and mapping.
    """
    if source.job_id != destination.job_id:
        raise TransferError("source and destination belong to different jobs")
    if source.role != ServerRole.SOURCE or destination.role != ServerRole.DESTINATION:
        raise TransferError(f"{source.name} must be a source and {destination.name} a destination")
    pairing = session.scalar(select(Pairing).where(
        Pairing.source_server_id == source.id, Pairing.destination_server_id == destination.id))
    if pairing is None:
        pairing = Pairing(job_id=source.job_id, source_server_id=source.id,
                          destination_server_id=destination.id)
        session.add(pairing)
    pairing.shares = list(shares)
    pairing.path_mapping = dict(path_mapping or {})
    session.flush()
    return pairing


def chosen_shares(session: Session, pairing: Pairing) -> list[Share]:
    """The source shares of ``pairing``: those named in it (rows made if inventory has not
    run), or every inventoried share of the source when it names none."""
    if pairing.shares:
        shares = []
        for name in pairing.shares:
            share = session.scalar(select(Share).where(
                Share.server_id == pairing.source_server_id, Share.name == name))
            if share is None:
                share = Share(server_id=pairing.source_server_id, name=name)
                session.add(share)
                session.flush()
            shares.append(share)
        return shares
    shares = list(session.scalars(select(Share).where(
        Share.server_id == pairing.source_server_id).order_by(Share.name)))
    if not shares:
        raise TransferError("the pairing names no share and the source has no inventoried share")
    return shares


def create_run(session: Session, pairing: Pairing, options: TransferOptions) -> TransferRun:
    """A new pending run of ``pairing`` with ``options`` (a previous run is never reused)."""
    active = session.scalar(select(TransferRun.id).where(
        TransferRun.pairing_id == pairing.id,
        TransferRun.state.in_((RunState.PENDING, RunState.RUNNING))))
    if active is not None:
        raise TransferError(f"run {active} of this pairing has not finished")
    chosen_shares(session, pairing)  # fails now, not later, when there is nothing to move
    run = TransferRun(job_id=pairing.job_id, pairing_id=pairing.id, options=options.to_json(),
                      state=RunState.PENDING)
    session.add(run)
    session.flush()
    advance_job(session, pairing.job_id, JobState.TRANSFER)
    return run


def cancel_run(session: Session, run_id: int, reason: str = "cancelled by the operator") -> bool:
    """Mark a pending or running run cancelled (workers then skip its remaining batches);
    False when the run had already ended."""
    result = session.execute(update(TransferRun).where(
        TransferRun.id == run_id, TransferRun.state.in_((RunState.PENDING, RunState.RUNNING)))
        .values(state=RunState.CANCELLED, error=reason, ended_at=utcnow())
        .execution_options(synchronize_session=False))
    return result.rowcount == 1


def default_publisher() -> Publisher:
    """Publishes batches through this process's Celery app (settings' broker)."""
    return celery_publisher(create_celery_app())


def _event(session: Session, run: TransferRun, kind: str, message: str, *,
           level: EventLevel = EventLevel.INFO, server_id: int | None = None, **detail) -> None:
    session.add(Event(job_id=run.job_id, server_id=server_id, level=level, kind=kind,
                      message=message, detail={"run_id": run.id, **detail}))


# --- the driver ------------------------------------------------------------------------

@dataclass(frozen=True)
class _ShareTarget:
    share_id: int
    name: str
    destination_share: str


@dataclass
class _HostAccess:
    """A run's management connections to both servers and what it reads through them.

    ``pair``: (source adapter, destination adapter), or None where the destination cannot
    be managed (``_host_adapters`` makes it once; closed when the run ends).
    ``destination_clocked``: a share's listing read the destination's clock (the run then
    reads it again after its last write). ``listings``: share id -> the hosts' listing of
    that share, begun before the share check (``_begin_host_listings``), in ``reader``.
    """

    made: bool = False
    pair: tuple | None = None
    destination_clocked: bool = False
    listings: dict[int, Future] = field(default_factory=dict)
    reader: ThreadPoolExecutor | None = None

    def close(self) -> None:
        """Close the connections (a listing still running fails quietly: nobody waits for it)."""
        if self.reader is not None:
            self.reader.shutdown(wait=False, cancel_futures=True)
        for adapter in self.pair or ():
            adapter.close()


@dataclass(frozen=True)
class _Context:
    run_id: int
    job_id: int
    pairing_id: int
    source_id: int
    destination_id: int
    queue: str
    options: TransferOptions
    shares: tuple[_ShareTarget, ...]
    started_at: Any = None
    resumed: bool = False
    # Destination trees the share check opened, by share id, each kept for its share's
    # planning: a connection less per share (a log-on costs smbd ~20 ms of CPU).
    checked_trees: dict[int, SmbTree] = field(default_factory=dict)
    hosts: _HostAccess = field(default_factory=_HostAccess)

    def check_deadline(self) -> None:
        """Raise DurationExceeded once the run has lasted longer than its maximum duration."""
        if self.options.max_duration and self.started_at is not None \
                and (utcnow() - self.started_at).total_seconds() > self.options.max_duration:
            raise DurationExceeded(f"maximum duration of {self.options.max_duration:g} s exceeded")


Progress = Callable[[str], object]


def execute_run(run_id: int, publish: Publisher | None = None, *, poll_interval: float = 0.1,
                progress: Progress | None = None, resume: bool = False) -> RunState:
    """Drive run ``run_id`` through every stage to its end; returns its final state.

    ``publish`` sends dispatched batches (default: this process's Celery app);
    ``progress`` receives one line of text per stage (default: this module's logger).
    The driver looks at its batches every ``poll_interval`` seconds (two small queries):
    at 0.5 s a run of a few large files lost a quarter of a second on average at each
    stage's end.
    Proxy workers for the destination must be running (orchestrator.transfer.workers
    starts local ones in embedded mode). A cancelled run stops and returns CANCELLED; an
    unexpected error marks the run failed, records it as an event and is re-raised.
    ``resume`` also takes a run left ``running`` by a driver that died (the caller must
    be sure that driver is gone) and continues it from the database state.
    """
    publish = publish or default_publisher()
    say = progress or (lambda line: logger.info("run %s: %s", run_id, line))
    context = _start(run_id, resume)
    try:
        with session_scope() as session:
            source = session.get(Server, context.source_id)
            destination = session.get(Server, context.destination_id)
        if context.resumed:
            _republish_queued(context, publish, say)
        _begin_host_listings(context, source, destination)
        targets = _prepare_destination(context, source, destination, say)
        try:
            plans = {}
            for target in targets:
                plans[target.share_id] = _plan_share(context, target, source, destination,
                                                     publish, say)
            _wait_for_batches(context, publish, poll_interval, say, "files")
            for target in targets:
                context.check_deadline()
                plan = plans[target.share_id]
                if not plan.first:
                    _mirror_share(context, target, destination, say, plan.mirror)
                _copy_directories(context, target, publish, poll_interval, say)
            _store_folder_digests(context, plans)
            _record_end_clock(context)
        except DurationExceeded as exc:
            _stop_for_duration(context, publish, poll_interval, say, str(exc))
            _record_end_clock(context)
        state = _finish(context)
    except RunCancelled:
        say("cancelled")
        return RunState.CANCELLED
    except BaseException as exc:
        with session_scope() as session:
            run = session.get(TransferRun, run_id)
            if run.state != RunState.CANCELLED:
                run.state = RunState.FAILED
                run.error = f"{type(exc).__name__}: {exc}"
                run.ended_at = utcnow()
            _event(session, run, EVENT_RUN_ERROR, f"{type(exc).__name__}: {exc}", level=EventLevel.ERROR)
        raise
    finally:
        for tree in context.checked_trees.values():  # shares the run stopped before planning
            tree.close()
        context.hosts.close()
    say(state.value)
    return state


def _start(run_id: int, resume: bool = False) -> _Context:
    with session_scope() as session:
        run = session.get(TransferRun, run_id)
        if run is None:
            raise TransferError(f"no transfer run {run_id}")
        # Conditional, so that two drivers can never both take the same pending run.
        taken = session.execute(update(TransferRun).where(
            TransferRun.id == run_id, TransferRun.state == RunState.PENDING).values(
            state=RunState.RUNNING, started_at=utcnow()).execution_options(synchronize_session=False))
        resumed = False
        if taken.rowcount != 1:
            session.refresh(run)
            if not (resume and run.state == RunState.RUNNING):
                raise TransferError(f"run {run_id} is {run.state.value}: only a pending run can be "
                                    "driven, or a running one resumed after its driver died")
            resumed = True
            _event(session, run, EVENT_RESUMED, "driving resumed from the database state")
        session.refresh(run)
        pairing = session.get(Pairing, run.pairing_id)
        options = TransferOptions.from_json(run.options)
        destination = session.get(Server, pairing.destination_server_id)
        shares = tuple(_ShareTarget(share.id, share.name, options.destination_share(share.name))
                       for share in chosen_shares(session, pairing))
        return _Context(run.id, run.job_id, pairing.id, pairing.source_server_id, destination.id,
                        get_settings().destination_queue(destination.name), options, shares,
                        run.started_at, resumed)


def _republish_queued(context: _Context, publish: Publisher, say: Progress) -> None:
    """On resume: publish again every batch still queued (its message may be lost; a
    second delivery is harmless, the second claim fails). Running batches are re-leased
    by the reaper once their lease expires; finished ones stay finished."""
    with session_scope() as session:
        queued = list(session.scalars(select(Batch).where(
            Batch.run_id == context.run_id, Batch.state == BatchState.QUEUED)))
        for batch in queued:
            dispatch_batch(session, batch, publish, task_name=COPY_TASK, queue=context.queue)
    say(f"resumed: {len(queued)} queued batches published again")


def _stop_for_duration(context: _Context, publish: Publisher, poll_interval: float,
                       say: Progress, reason: str) -> None:
    """Record why the run stopped early and let the batches already out finish (workers
    give up the ones not yet started)."""
    with session_scope() as session:
        run = session.get(TransferRun, context.run_id)
        _event(session, run, EVENT_MAX_DURATION, f"{reason}: no further batch dispatched",
               level=EventLevel.ERROR, max_duration=context.options.max_duration)
    say(f"{reason}: letting running batches finish")
    _wait_for_batches(context, publish, poll_interval, say, "files", check_deadline=False)


def _host_adapters(context: _Context, source: Server, destination: Server):
    """``_adapters``, made once per run: the accounts-and-shares stage and every share's
    host listing use the same connections, closed when the run ends."""
    if not context.hosts.made:
        context.hosts.made = True
        context.hosts.pair = pair = _adapters(source, destination)
        for adapter in pair or ():
            # Logging on takes a few round trips and the server a moment after it: done
            # in the background while the run goes on (a failure shows at first use).
            threading.Thread(target=_connect_quietly, args=(adapter,), daemon=True,
                             name="sms-host-connect").start()
    return context.hosts.pair


def _connect_quietly(adapter) -> None:
    from orchestrator.hosts import HostError

    try:
        adapter.connect()
    except HostError:
        pass


def _adapters(source: Server, destination: Server):
    """(source adapter, destination adapter) for the accounts-and-shares stage and the
    host listings, or None when the destination cannot be managed (smb-only, or a Samba
    server registered without SSH management)."""
    from common.models import ServerKind
    from orchestrator.inventory.service import management_adapter, smb_adapter

    management = destination.management or {}
    if destination.kind is ServerKind.SMB_ONLY or (
            destination.kind is ServerKind.SAMBA and not management.get("ssh_user")):
        return None  # SMB only: no management channel was configured
    destination_adapter = management_adapter(destination)
    if destination_adapter is None:
        return None
    source_adapter = management_adapter(source) or smb_adapter(source)
    return source_adapter, destination_adapter


def _migrate_accounts(context: _Context, source: Server, destination: Server, source_adapter,
                      destination_adapter, say: Progress) -> dict[str, str]:
    """Migrate the source's local accounts once per run (a resumed run reuses its stored
    SID map; accounts earlier runs of the pairing created are mapped again, not
    re-created); returns the source SID -> destination SID map."""
    from orchestrator.hosts import HostError
    from orchestrator.transfer.principals import migrate_principals

    with session_scope() as session:
        stored = session.scalar(select(SidMap.entries).where(SidMap.run_id == context.run_id))
        previous: dict[str, str] = {}
        for entries in session.scalars(select(SidMap.entries).join(
                TransferRun, TransferRun.id == SidMap.run_id).where(
                TransferRun.pairing_id == context.pairing_id, TransferRun.id != context.run_id)
                .order_by(SidMap.id)):
            previous.update(entries)
    if stored is not None:
        say(f"local accounts already migrated by this run: {len(stored)} SIDs mapped")
        return dict(stored)
    try:
        migration = migrate_principals(source_adapter, destination_adapter,
                                       context.options.migrate_principals,
                                       {source.username, destination.username}, previous)
    except HostError as exc:
        with session_scope() as session:
            run = session.get(TransferRun, context.run_id)
            _event(session, run, EVENT_PRINCIPALS, f"local accounts not migrated: {exc}",
                   level=EventLevel.WARNING, server_id=context.destination_id)
        say(f"local accounts not migrated: {exc}")
        return {}
    counts: dict[str, int] = {}
    for account in migration.accounts:
        counts[account.status] = counts.get(account.status, 0) + 1
    with session_scope() as session:
        session.add(SidMap(run_id=context.run_id, entries=migration.sid_map,
                           accounts=[a.to_json() for a in migration.accounts]))
        run = session.get(TransferRun, context.run_id)
        _event(session, run, EVENT_PRINCIPALS,
               f"local accounts: {counts or 'none migrated'}; {len(migration.sid_map)} SIDs mapped",
               level=EventLevel.WARNING if counts.get("failed") else EventLevel.INFO,
               server_id=context.destination_id, counts=counts)
    if migration.accounts:
        say(f"local accounts: {counts}, {len(migration.sid_map)} SIDs mapped")
    return migration.sid_map


def _prepare_destination(context: _Context, source: Server, destination: Server,
                         say: Progress) -> tuple[_ShareTarget, ...]:
    """Accounts and shares on a manageable destination; returns the shares to transfer
    (those whose recreation failed are left out, with an error event)."""
    with session_scope() as session:
        done = run_events(session, context.run_id, context.job_id, (EVENT_SHARE_RECREATED,
                                                                    EVENT_SHARE_ERROR))
    failed = {event.detail.get("share") for event in done if event.kind == EVENT_SHARE_ERROR}
    if done:  # a resumed run: this stage already ran
        return tuple(t for t in context.shares if t.name not in failed)
    adapters = _host_adapters(context, source, destination)
    if adapters is None:
        return _check_existing_shares(context, destination)
    from orchestrator.hosts import HostError
    from orchestrator.transfer.shares import recreate_shares

    source_adapter, destination_adapter = adapters
    with ThreadPoolExecutor(1, thread_name_prefix="sms-source-shares") as pool:
        # Where the adapter allows it, the source's shares are read while the accounts
        # are migrated (neither needs the other).
        reading = pool.submit(source_adapter.shares) \
            if context.options.recreate_shares and source_adapter.concurrent_reads else None
        sid_map = _migrate_accounts(context, source, destination, source_adapter,
                                    destination_adapter, say)
    if not context.options.recreate_shares:
        return _check_existing_shares(context, destination)
    with session_scope() as session:
        pairing = session.get(Pairing, context.pairing_id)
        path_mapping = dict(pairing.path_mapping or {})
    try:
        facts = {share.name: share for share in (reading.result() if reading else source_adapter.shares())}
    except HostError as exc:
        facts = {}
        say(f"source shares could not be read: {exc}")
    chosen, recreated, existing = [], [], []
    for target in context.shares:
        share = facts.get(target.name)
        if share is not None and share.path and not _mapped(share.path, path_mapping):
            existing.append(target)  # no mapping covers it: use the share as it is
            continue
        recreated.append(target)
        chosen.append(dataclasses.replace(share, name=target.destination_share) if share
                      else target.name)
    outcomes = recreate_shares(source_adapter, destination_adapter, chosen, path_mapping,
                               sid_map, replace=True)
    kept = list(_check_existing_shares(context, destination, existing,
                                       "no entry of the pairing's path mapping covers its folder, "
                                       "so it was not recreated"))
    with session_scope() as session:
        run = session.get(TransferRun, context.run_id)
        for target, outcome in zip(recreated, outcomes):
            ok = outcome.status in ("created", "updated", "unchanged")
            _event(session, run, EVENT_SHARE_RECREATED if ok else EVENT_SHARE_ERROR,
                   f"share {target.destination_share}: {outcome.status}: {outcome.reason}",
                   level=EventLevel.INFO if ok else EventLevel.ERROR,
                   server_id=context.destination_id, share=target.name, share_id=target.share_id,
                   notes=outcome.notes,
                   destination_path=outcome.destination_path)
            say(f"{target.name}: share {outcome.status} on the destination ({outcome.reason})")
            if ok:
                kept.append(target)
    return tuple(kept)


def _mapped(path: str, path_mapping: dict[str, str]) -> bool:
    from orchestrator.transfer.shares import PathNotMapped, map_path

    try:
        map_path(path, path_mapping)
        return True
    except PathNotMapped:
        return False


def _check_existing_shares(context: _Context, destination: Server,
                           targets: Iterable[_ShareTarget] | None = None,
                           why: str = "an smb-only destination's shares must be created "
                                      "beforehand") -> tuple[_ShareTarget, ...]:
    """Shares that must exist already on the destination (smb-only destination, or no
    path mapping to recreate them): one that does not is left out with an error an
    administrator can act on (``why`` says why it was not created)."""
    kept = []
    for target in context.shares if targets is None else targets:
        try:
            context.checked_trees[target.share_id] = open_tree(
                server_endpoint(destination, target.destination_share))
            kept.append(target)
        except Exception as exc:  # noqa: BLE001 - any failure to connect: report, go on
            with session_scope() as session:
                run = session.get(TransferRun, context.run_id)
                _event(session, run, EVENT_SHARE_ERROR,
                       f"share {target.destination_share} cannot be opened on {destination.name} "
                       f"({type(exc).__name__}: {exc}); {why}", level=EventLevel.ERROR,
                       server_id=context.destination_id,
                       share=target.name, share_id=target.share_id)
    return tuple(kept)


def _is_first_run(session: Session, context: _Context, target: _ShareTarget,
                  exclude_run: bool = False) -> bool:
    """True until PreExistingData was handled for this pairing and share by some run
    (by a run other than this one, with ``exclude_run``: a resumed first run stays first)."""
    details = session.scalars(select(Event.detail).where(
        Event.job_id == context.job_id, Event.kind == EVENT_PRE_EXISTING))
    return not any(detail.get("pairing_id") == context.pairing_id
                   and detail.get("share") == target.name
                   and not (exclude_run and detail.get("run_id") == context.run_id)
                   for detail in details)


@dataclass
class _MirrorWork:
    """What the mirror of a re-run must do, found while planning: the destination entries
    the source no longer has (or has as the other type) and the destination folders that
    could not be listed."""

    extras: list[DirEntry]
    errors: list[WalkError]


@dataclass
class _SharePlan:
    """The outcome of planning one share: whether it was the pairing's first run of it,
    and the mirror's work when the destination was listed while planning (None: the
    mirror walks the destination itself)."""

    first: bool
    mirror: _MirrorWork | None = None
    digests: host_listing.FolderDigestWriter | None = None


def _plan_share(context: _Context, target: _ShareTarget, source: Server, destination: Server,
                publish: Publisher, say: Progress) -> _SharePlan:
    """PreExistingData (first run), then walk the share and dispatch its file batches.

    On a re-run with a previous finished run of the share (and not a resumed walk), the
    destination share is listed while the source is walked, and entries that neither
    side changed since that run are recorded unchanged without a batch (``_Baseline``);
    where both servers are managed over SSH, folders their own listings show unchanged
    are not listed over SMB at all (orchestrator.transfer.host_listing, whose clocks every
    run reads first). A share this run already walked to the end (resumed run) is not
    walked again.
    """
    checked = context.checked_trees.pop(target.share_id, None)
    with session_scope() as session:
        if any(event.detail.get("share_id") == target.share_id for event in
               run_events(session, context.run_id, context.job_id, (EVENT_SHARE_PLANNED,))):
            if checked is not None:
                checked.close()
            return _SharePlan(_is_first_run(session, context, target, exclude_run=False))
        first_walk = not session.scalar(select(exists().where(
            FileRecord.run_id == context.run_id, FileRecord.share_id == target.share_id)))
        first = _is_first_run(session, context, target, exclude_run=True)
        handled = not _is_first_run(session, context, target) and first
        previous_run = None if first or not first_walk else _previous_run(session, context, target)
        hosts = _host_adapters(context, source, destination)
        # The servers' clocks are read (and on a re-run both shares listed on the hosts)
        # while the trees are opened, and before anything is listed over SMB; where this
        # run does not recreate shares, since before the share check.
        reading = context.hosts.listings.pop(target.share_id, None)
        if reading is None and hosts is not None:
            reading = _read_host_listing(session, context, target, previous_run)
    source_endpoint = server_endpoint(source, target.name)
    destination_endpoint = server_endpoint(destination, target.destination_share)
    with _fewer_collections(), _open_trees(source_endpoint, checked or destination_endpoint) as trees:
        mirror, digests = _walk_share(context, target, trees, first and not handled, previous_run, reading,
                                      not first_walk, publish, say)
    with session_scope() as session:
        run = session.get(TransferRun, context.run_id)
        _event(session, run, EVENT_SHARE_PLANNED, f"{target.name}: walked and dispatched",
               share=target.name, share_id=target.share_id)
    return _SharePlan(first, mirror, digests)


def _begin_host_listings(context: _Context, source: Server, destination: Server) -> None:
    """Where this run does not recreate the destination's shares (and is not resumed),
    begin every share's host listing before the share check, which then costs nothing
    (a log-on to the destination, ~25 ms); ``_plan_share`` takes each one."""
    if context.resumed or context.options.recreate_shares or _host_adapters(context, source, destination) is None:
        return
    with session_scope() as session:
        for target in context.shares:
            previous_run = None if _is_first_run(session, context, target, exclude_run=True) \
                else _previous_run(session, context, target)
            context.hosts.listings[target.share_id] = _read_host_listing(session, context, target, previous_run)


def _read_host_listing(session: Session, context: _Context, target: _ShareTarget,
                       previous_run: int | None) -> Future:
    """Begin reading both hosts' clocks and, when there is a ``previous_run`` to compare
    with, their listings of the share (``host_listing.read_listings``), in the run's
    listing thread: one share after another."""
    if context.hosts.reader is None:
        context.hosts.reader = ThreadPoolExecutor(1, thread_name_prefix="sms-host-listing")
    changed_since = None if previous_run is None else \
        host_listing.listing_threshold(session, context.job_id, target.share_id, previous_run)
    return context.hosts.reader.submit(
        host_listing.read_listings, *context.hosts.pair, target.name, target.destination_share,
        _system_folders(context), [*_system_folders(context), dest_ops.PRE_EXISTING_DATA],
        scan=previous_run is not None, changed_since=changed_since)


def _store_folder_digests(context: _Context, plans: dict[int, _SharePlan]) -> None:
    """Once every file and folder stage has ended: store each share's folder digests for the
    next run (``host_listing.FolderDigestWriter``), from what the walk saw and this run's
    own records as the workers left them. Only a run's previous run's digests are ever
    read: the pairing's earlier runs' digests of the share are deleted (records are kept)."""
    algorithm = context.options.verified_algorithm
    records = FileRecord.__table__.c
    for share_id, plan in plans.items():
        if plan.digests is None:
            continue
        with session_scope() as session:
            own = session.execute(select(
                records.relative_path, records.is_dir, records.size, records.last_write_time, records.id,
                records.state.in_(ARRIVED_STATES), holds_verified_hash(records, algorithm)).where(
                records.run_id == context.run_id, records.share_id == share_id)).all()
            plan.digests.store(session, context.run_id, share_id, own)
            session.execute(delete(FolderDigest).where(
                FolderDigest.share_id == share_id, FolderDigest.run_id < context.run_id,
                FolderDigest.run_id.in_(select(TransferRun.id).where(TransferRun.pairing_id == context.pairing_id))))


def _record_end_clock(context: _Context) -> None:
    """Once everything is written: read the destination's clock again, for the next run's
    host listing (``host_listing.EVENT_HOST_CLOCK_END``), when this run read it before."""
    if not context.hosts.destination_clocked:
        return
    from orchestrator.hosts import HostError

    try:
        clock = context.hosts.pair[1].clock()
    except HostError as exc:
        logger.info("run %s: destination clock not read at the end: %s", context.run_id, exc)
        return
    with session_scope() as session:
        run = session.get(TransferRun, context.run_id)
        _event(session, run, host_listing.EVENT_HOST_CLOCK_END, "destination's clock read after the last write",
               server_id=context.destination_id, destination_clock=clock)


def _system_folders(context: _Context) -> list[str]:
    """The share-root folders this run leaves out (none when it includes them)."""
    return list(SYSTEM_FOLDERS) if context.options.skip_system_folders else []


def _record_host_listing(context: _Context, target: _ShareTarget,
                         listings: host_listing.HostListings) -> host_listing.HostListings | None:
    """Record the clocks the hosts gave (``host_listing.EVENT_HOST_LISTING``) and say
    whether their listings will stand in for SMB's; the listings when they will."""
    usable = listings.usable
    if listings.destination is not None:
        context.hosts.destination_clocked = True
    how = ("both shares listed on the hosts" if usable else
           "compared over SMB" + (f" ({'; '.join(listings.notes)})" if listings.notes else ""))
    with session_scope() as session:
        run = session.get(TransferRun, context.run_id)
        _event(session, run, host_listing.EVENT_HOST_LISTING, f"{target.name}: hosts' clocks read; {how}",
               share=target.name, share_id=target.share_id,
               source_clock=listings.source.clock if listings.source else None,
               destination_clock=listings.destination.clock if listings.destination else None)
    return listings if usable else None


def _walk_share(context: _Context, target: _ShareTarget, trees: list[SmbTree], pre_existing: bool,
                previous_run: int | None, reading: Future | None, resuming: bool, publish: Publisher,
                say: Progress) -> tuple[_MirrorWork | None, host_listing.FolderDigestWriter | None]:
    """PreExistingData (``pre_existing``), then the walk and dispatch of the share, compared
    with ``previous_run`` when given; the mirror's work when the destination was listed
    (``_walk_and_dispatch``), and the share's folder digests to store at the run's end
    (``host_listing.FolderDigestWriter``; None when the next run cannot rely on them).
    ``reading`` gives the hosts' clocks and listings (``host_listing.read_listings``):
    nothing is listed or moved over SMB before they are recorded; the previous run's
    records are read meanwhile."""
    source_tree, destination_tree = trees
    algorithm = context.options.verified_algorithm
    with ThreadPoolExecutor(2, thread_name_prefix="sms-baseline") as executor:
        baseline = recorder = None
        if previous_run is not None:
            baseline = _Baseline(previous_run, algorithm)
            baseline.begin_loading(executor, context, target, reading is not None)
            recorder = _UnchangedRecorder(context)
            if reading is not None:
                recorder.speculate(baseline)
        try:
            read = None if reading is None else reading.result()
            listings = None if read is None else _record_host_listing(context, target, read)
            # The digests hold for the next run when every record this run makes or refers to
            # was held to this run's source clock: the clock was read, and a re-run compared on
            # both hosts' listings (host_listing.stored_folders says why); not for a walk
            # resumed on records made before.
            digests = host_listing.FolderDigestWriter(algorithm) if (
                read is not None and read.source is not None and not resuming
                and (baseline is None or listings is not None)) else None
            if pre_existing:
                moved = dest_ops.move_into_pre_existing_data(destination_tree)
                with session_scope() as session:
                    run = session.get(TransferRun, context.run_id)
                    _event(session, run, EVENT_PRE_EXISTING,
                           f"{len(moved)} entries moved into {dest_ops.PRE_EXISTING_DATA}",
                           server_id=context.destination_id, pairing_id=context.pairing_id,
                           share=target.name, moved=moved[:1000])
                if moved:
                    say(f"{target.name}: {len(moved)} pre-existing entries moved into "
                        f"{dest_ops.PRE_EXISTING_DATA}")
            if baseline is not None:
                baseline.start(executor, context, destination_tree, listings)
            return _walk_and_dispatch(context, target, source_tree, publish, say, resuming=resuming,
                                      baseline=baseline, recorder=recorder, digests=digests), digests
        except BaseException:
            if recorder is not None:
                recorder.abandon()  # its thread may be waiting for the clean folders
            raise


@contextmanager
def _open_trees(*places: SmbEndpoint | SmbTree) -> Iterator[list[SmbTree]]:
    """Connect to the shares at ``places`` at once (each connection is several round
    trips) and close them all at the end. A place may be a tree already open (the share
    check's), used as it is while its connection is alive. When one cannot be reached,
    the others are closed and its error raised, before anything is done on any of them."""
    def connect(place: SmbEndpoint | SmbTree) -> SmbTree:
        if isinstance(place, SmbEndpoint):
            return open_tree(place)
        if place.alive:
            return place
        place.close()  # the server dropped it while earlier shares were planned
        return open_tree(place.endpoint)

    with ThreadPoolExecutor(len(places), thread_name_prefix="sms-connect") as executor:
        opening = [executor.submit(connect, place) for place in places]
    trees = [future.result() for future in opening if future.exception() is None]
    try:
        for future in opening:
            future.result()
        yield trees
    finally:
        for tree in trees:
            tree.close()


# Walks under way in this process (runs are driven in threads side by side) and the
# collector's thresholds from before the first of them.
_walks_lock = threading.Lock()
_walks_under_way = 0
_thresholds_before: tuple[int, ...] = ()


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """Python's cyclic garbage collector runs less often inside: a share's planning makes
    tens of thousands of objects that live until it ends (the listings, the baseline), and
    every full collection goes through all of them (0.1 s in every other re-run of 20,000
    files with Python's default thresholds). Cycles are still collected. The thresholds are the
    process's: raised when the first of several concurrent walks starts, put back when
    the last one ends (each putting back what it found would leave them raised when two
    runs' walks overlap)."""
    global _walks_under_way, _thresholds_before
    with _walks_lock:
        if not _walks_under_way:
            _thresholds_before = gc.get_threshold()
            gc.set_threshold(WALK_GC_THRESHOLD, *_thresholds_before[1:])
        _walks_under_way += 1
    try:
        yield
    finally:
        with _walks_lock:
            _walks_under_way -= 1
            if not _walks_under_way:
                gc.set_threshold(*_thresholds_before)


def _previous_run(session: Session, context: _Context, target: _ShareTarget) -> int | None:
    """The pairing's latest earlier run that ended (succeeded or with errors) and walked
    the share (its root record exists), or None."""
    return session.scalar(select(func.max(FileRecord.run_id)).join(
        TransferRun, TransferRun.id == FileRecord.run_id).where(
        TransferRun.pairing_id == context.pairing_id, TransferRun.id < context.run_id,
        TransferRun.state.in_((RunState.SUCCEEDED, RunState.COMPLETED_WITH_ERRORS)),
        FileRecord.share_id == target.share_id, FileRecord.relative_path == ""))


class _Baseline:
    """What a re-run compares its source walk with, to decide unchanged entries itself.

    ``previous``: the previous finished run's records of the share that arrived on the
    destination (copied, verified or unchanged), path -> (is_dir, size, last-write
    time, change time, attributes, record id, whether it holds a verified hash of the
    run's algorithm (True when the run does not verify), creation time, last-access time,
    the run that wrote the record); where that run kept folder digests, only its folders
    and the files of the folders that are not clean (``load_folder_files``).
    ``recorded``: what each folder must show on the hosts to be clean
    (``host_listing.stored_folders`` or ``recorded_folders``), when the hosts summarise
    the share's folders. ``clean``: the folders the hosts' listings show unchanged on
    both sides (``host_listing.clean_folders``), each with what the previous run recorded
    in it; neither walk lists them. ``subfolders``: folder -> the paths of the folders
    recorded directly inside it. ``destination``: a listing of the
    destination share (PreExistingData and system folders not entered), path ->
    DirEntry, the root under ''. Both are held in
    memory for the walk (roughly half a kilobyte per entry); each source entry takes its own
    out of both, so what is left of ``destination`` at the end is what the source no
    longer has.

    An entry is unchanged when the source still has exactly what the previous run
    recorded (size, last-write and change time, attributes: an edit, a new security
    descriptor, stream, attribute or time set moves the change time) and the destination
    still has what the copy engine would skip (size, last-write time and the compared
    attributes; for a folder, a last-write time still equal to the source's also means
    nobody added, removed or renamed anything in it). With a verifying checksum the
    previous record of a file must also hold a verified hash of the same algorithm. Creation
    times are not compared: for a file made on the server's disk (no stored creation
    time) Samba reports the earliest of its other times, which the first read moves
    (relatime); setting a creation time on purpose moves the change time anyway.
    """

    def __init__(self, run_id: int, algorithm: str | None):
        self.run_id = run_id
        self.algorithm = algorithm
        self.previous: dict[str, tuple] = {}
        self.destination: dict[str, DirEntry] = {}
        self.errors: list[WalkError] = []
        self.replaced: list[DirEntry] = []  # destination entries of the other type
        # Destination folders listed to the end (their entries are all in ``destination``);
        # everything, once ``complete``.
        self.listed: set[str] = set()
        self.complete = False
        self.loaded = False  # ``previous`` holds the previous run's records
        self.loading: Future | None = None
        self.filled: Future | None = None
        self.summaries = False  # the hosts were asked to summarise the share's folders
        self.recorded: host_listing.RecordedFolders | None = None
        self.clean: dict[str, host_listing.RecordedFolder] = {}
        self.subfolders: dict[str, list[str]] = {}
        # Where the walks of both sides start: the top-most folders that are not clean.
        self.roots: list[str] = [""]
        # (path, record's run) -> whether the source host shows the entry changed since.
        self.changed_on_host: Callable[[str, int], bool] | None = None

    def begin_loading(self, executor: ThreadPoolExecutor, context: _Context, target: _ShareTarget,
                      summaries: bool) -> None:
        """Begin ``load`` in one of ``executor``'s threads (first of all: it needs nothing
        else); with ``summaries`` (the hosts are summarising the share's folders), also
        what each folder must show to be clean (``host_listing.stored_folders`` or
        ``recorded_folders``)."""
        self.summaries = summaries
        self.loading = executor.submit(self.load, context, target, summaries)

    def start(self, executor: ThreadPoolExecutor, context: _Context, tree: SmbTree,
              listings: host_listing.HostListings | None = None) -> None:
        """Begin ``fill`` in another of ``executor``'s threads (``begin_loading`` came
        first); with the hosts' ``listings``, find the clean folders first (from the
        loaded records), so that neither walk lists them; where only folders were loaded,
        the files of the other folders are loaded beside the walks."""
        if self.summaries:
            self.loading.result()
            if listings is not None:
                self._find_clean(listings)
            if not self.loaded:
                self.loading = executor.submit(self.load_folder_files, [
                    folder for folder in self.recorded.folders if folder not in self.clean])
        self.filled = executor.submit(self.fill, context, tree)

    def _find_clean(self, listings: host_listing.HostListings) -> None:
        self.clean = host_listing.clean_folders(self.recorded, self.previous, listings, self.algorithm)
        self.changed_on_host = functools.partial(host_listing.changed_on_host, listings.source, self.recorded)
        self.roots = [] if "" in self.clean else [""]
        for folder in self.clean:
            self.roots += [path for path in self.subfolders.get(folder, ()) if path not in self.clean]

    def check(self) -> None:
        """Re-raise what stopped a filling thread, if one has failed."""
        for future in (self.loading, self.filled):
            if future.done():
                future.result()

    def wait(self) -> None:
        """Block until the loading and the listing have ended; re-raise their failure."""
        self.loading.result()
        self.filled.result()

    def load(self, context: _Context, target: _ShareTarget, summaries: bool) -> None:
        """Read the previous run's records of the share (in a thread of its own, beside the
        hosts' listings: most of it is the database's time); with ``summaries``, also
        ``recorded``: from the folder digests that run kept, when it did, and then only
        its records of folders (``load_folder_files`` reads the files that are needed)."""
        with session_scope() as session:
            if summaries:
                self.recorded = host_listing.stored_folders(session, context.job_id, target.share_id, self.run_id)
            if self.recorded is not None:
                table = FileRecord.__table__.c
                self.previous = self._read(session, table, table.run_id, and_(
                    table.run_id == self.run_id, table.share_id == target.share_id, table.is_dir,
                    table.state.in_(ARRIVED_STATES)))
            else:
                records = run_records(self.run_id).c
                self.previous = self._read(session, records, records.origin_run_id, and_(
                    records.share_id == target.share_id, records.state.in_(ARRIVED_STATES)))
                if summaries:
                    self.recorded = host_listing.recorded_folders(session, context.job_id, target.share_id,
                                                                  self.run_id, self.previous, self.algorithm)
                self.loaded = True
        for path, before in self.previous.items():
            if before[0] and path:
                self.subfolders.setdefault(_parent(path), []).append(path)

    def load_folder_files(self, folders: list[str]) -> None:
        """Read the records of the files the previous run recorded in ``folders`` (those
        that are not clean), by the ids its folder digests keep."""
        ids = [record_id for folder in folders for record_id in self.recorded.folders[folder].file_ids]
        table = FileRecord.__table__.c
        with session_scope() as session:
            for start in range(0, len(ids), MIRROR_LOOKUP_CHUNK):
                self.previous.update(self._read(session, table, table.run_id,
                                                table.id.in_(ids[start:start + MIRROR_LOOKUP_CHUNK])))
        self.loaded = True

    def _read(self, session: Session, records, origin, where) -> dict[str, tuple]:
        """``previous``'s entries of the records ``where`` selects, from ``records`` (the
        records table's or ``run_records``' columns; ``origin``: the run that wrote each)."""
        columns = [records.relative_path, records.is_dir, records.size, records.last_write_time,
                   records.change_time, records.attributes, records.id,
                   holds_verified_hash(records, self.algorithm), records.creation_time,
                   records.last_access_time, origin]
        return {row[0]: tuple(row[1:]) for row in session.execute(select(*columns).where(where))}

    def fill(self, context: _Context, tree: SmbTree) -> None:
        """List the destination (in a thread beside the source walk; ``tree`` is used by it
        alone meanwhile), but for the clean folders. Folders are marked listed as their
        listings end, so the walk compares what it can early."""
        basic = md.stat(tree, "").basic
        self.destination[""] = DirEntry("", "", 0, 0, basic.creation_time, basic.last_access_time,
                                        basic.last_write_time, basic.change_time, basic.attributes, 0, 0)
        options, clean = context.options, self.clean
        channel = FastChannel.attach(tree.connection, tree.session, tree.tree)
        walker = PipelinedWalker(channel, "", depth=WALK_DEPTH, roots=self.roots, enter=lambda entry: not (
            dest_ops.is_protected(entry.path) or options.is_system_folder(entry.path) or entry.path in clean))
        try:
            for folder, entries in walker.folders():
                if not folder:  # only the root's entries can be protected (they are not entered)
                    entries = [entry for entry in entries if not dest_ops.is_protected(entry.path)]
                self.destination.update({entry.path: entry for entry in entries})
                self.listed.add(folder)
        finally:
            channel.release()
            self.errors = walker.errors
            self.complete = True

    def ready(self, folder: str) -> bool:
        """True when the source entries of ``folder`` can be compared: the previous records
        are loaded and the destination's listing of that folder has ended (or the whole
        listing has)."""
        return self.loaded and (self.complete or folder in self.listed)

    def unchanged(self, path: str, is_dir: bool, size: int, last_write: int, change: int,
                  attributes: int) -> int | None:
        """The id of the record holding a source entry's details (a folder's size is 0)
        when neither side changed the entry since the previous run, else None (also when
        the source host's listing shows its ctime moved: ``changed_on_host``)."""
        there = self.destination.pop(path, None)
        before = self.previous.pop(path, None)
        if there is not None and (there.is_dir and not there.is_reparse_point) != is_dir:
            self.replaced.append(there)
            return None
        if before is None or there is None \
                or before[:5] != (is_dir, size, last_write, change, attributes):
            return None
        if there.attributes & COMPARED_ATTRIBUTES != attributes & COMPARED_ATTRIBUTES \
                or there.last_write_time != last_write or there.size != size:
            return None
        if self.algorithm and not is_dir and not before[6]:  # a folder has no content to hash
            return None
        if self.changed_on_host is not None and self.changed_on_host(path, before[9]):
            return None  # a descriptor, attribute or stream set without a write
        return before[5]

    def mirror(self, unlisted: list[str], options: TransferOptions) -> _MirrorWork:
        """What the mirror must delete: destination entries no source entry took, except
        PreExistingData, system folders, anything under a source folder the walk could
        not list, and anything inside a folder already to be deleted."""
        pruned = {entry.path for entry in self.replaced if entry.is_dir}
        extras = list(self.replaced)
        for path, entry in self.destination.items():  # parents come before their children
            if not path:
                continue
            directory = entry.is_dir and not entry.is_reparse_point
            if path.rpartition("\\")[0] in pruned or dest_ops.is_protected(path) \
                    or _under(path, unlisted) or options.is_system_folder(path):
                if directory:
                    pruned.add(path)
                continue
            extras.append(entry)
            if directory:
                pruned.add(path)
        return _MirrorWork(extras, self.errors)


class _UnchangedRecorder:
    """Records a re-run's unchanged files in a thread of its own while the walk goes on.

    Each ``record`` call is one transaction in the recorder's own session: the files
    recorded by reference to the records holding their details (``UnchangedFile``, two
    integers per file, one COPY on PostgreSQL, in ascending order: PostgreSQL then adds
    to the end of its index) and the run's totals, written while the driver keeps walking
    and comparing. ``wait`` returns when everything handed over is committed and raises
    the first error any of it met.

    Where the previous run kept folder digests, on PostgreSQL, the references of every
    file that run recorded are written while the hosts still list the share (``speculate``),
    in a transaction that stays open until the clean folders are known (``settle``): then
    the references of the other folders' files are deleted (the walk records those it
    finds unchanged) and the rest committed. With nothing changed, most of the run's
    writing is done while it waits for the hosts.
    """

    def __init__(self, context: _Context):
        self.context = context
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sms-unchanged")
        self._pending: list[Future] = []
        self._clean: Future | None = None  # the clean folders, once ``settle`` knows them

    @property
    def speculating(self) -> bool:
        """True when ``speculate`` began: the clean folders' files go to ``settle``."""
        return self._clean is not None

    def record(self, record_ids: list[int], size: int) -> None:
        """Hand over source files found unchanged: the ids of the records holding their
        details, and their sizes' sum."""
        self._pending.append(self._executor.submit(self._store, record_ids, size))

    def _store(self, record_ids: list[int], size: int) -> None:
        with session_scope() as session:
            self._write(session, record_ids)
            self._add_totals(session, len(record_ids), size)

    def _write(self, session: Session, record_ids: Iterable[int]) -> None:
        run_id = self.context.run_id
        insert_rows(session, UnchangedFile.__table__, ("run_id", "record_id"),
                    [(run_id, record_id) for record_id in sorted(record_ids)])

    def _add_totals(self, session: Session, files: int, size: int) -> None:
        session.execute(update(TransferRun).where(TransferRun.id == self.context.run_id).values(
            files_total=TransferRun.files_total + files, bytes_total=TransferRun.bytes_total + size))

    def speculate(self, baseline: _Baseline) -> None:
        """Begin writing the references of the files the previous run recorded, once
        ``baseline`` has loaded and if it holds that run's folder digests (PostgreSQL only:
        on SQLite the open transaction would hold the database's one write lock, which the
        driver needs meanwhile). ``settle`` must follow, once the share's root is committed."""
        if get_engine().dialect.name != "postgresql":
            return
        self._clean = Future()
        self._pending.append(self._executor.submit(self._speculate, baseline, baseline.loading))

    def settle(self, clean: dict[str, host_listing.RecordedFolder]) -> None:
        """The clean folders are known (and the share's root committed): keep their files'
        references, delete the others', commit."""
        self._clean.set_result(clean)

    def _speculate(self, baseline: _Baseline, loading: Future) -> None:
        loading.result()
        recorded = baseline.recorded
        if recorded is not None and recorded.source_limit is not None:  # the previous run kept digests
            try:
                with session_scope() as session:
                    self._write(session, (record_id for folder in recorded.folders.values()
                                          for record_id in folder.file_ids))
                    clean = self._clean.result()
                    if not clean:
                        session.rollback()  # nothing to keep (the hosts' listings could not be used)
                        return
                    dropped = [record_id for path, folder in recorded.folders.items() if path not in clean
                               for record_id in folder.file_ids]
                    for start in range(0, len(dropped), MIRROR_LOOKUP_CHUNK):
                        session.execute(delete(UnchangedFile).where(
                            UnchangedFile.run_id == self.context.run_id,
                            UnchangedFile.record_id.in_(dropped[start:start + MIRROR_LOOKUP_CHUNK])))
                    self._add_totals(session, *_files_and_bytes(clean))
                return
            except (OperationalError, InterfaceError) as exc:
                # The open transaction was ended under it (an idle-in-transaction timeout
                # set by the database's administrator, a restart): the clean folders'
                # references are written again, in a transaction of their own.
                logger.warning("run %s: references written ahead were lost (%s); writing them again",
                               self.context.run_id, str(exc).splitlines()[0])
        clean = self._clean.result()
        self._store([record_id for folder in clean.values() for record_id in folder.file_ids],
                    _files_and_bytes(clean)[1])

    def wait(self) -> None:
        """Block until every handed-over chunk is committed; re-raise the first failure."""
        try:
            for future in self._pending:
                future.result()
        finally:
            self._pending.clear()
            self._executor.shutdown(wait=True)

    def abandon(self) -> None:
        """The walk stopped (cancelled, out of time, failed): drop what has not started,
        let the chunk in progress end (a speculative one is rolled back), and stop the
        thread. Nothing is lost: a resumed walk records what this run has not recorded yet."""
        if self._clean is not None and not self._clean.done():
            self._clean.set_exception(RunCancelled("the walk stopped before the clean folders were known"))
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()


def _files_and_bytes(folders: dict[str, host_listing.RecordedFolder]) -> tuple[int, int]:
    """How many files ``folders`` hold, and their sizes' sum."""
    return (sum(len(folder.file_ids) for folder in folders.values()),
            sum(folder.file_bytes for folder in folders.values()))


def _skip_directories(session: Session, context: _Context, share_id: int, previous_run: int,
                      paths: list[str]) -> None:
    """Mark this run's records of folders ``paths`` unchanged (state skipped), with the
    owner and hash algorithm ``previous_run`` recorded for them."""
    table = FileRecord.__table__
    before = table.alias("before")

    def carried(column: str):
        return select(before.c[column]).where(
            before.c.run_id == previous_run, before.c.share_id == share_id,
            before.c.relative_path == table.c.relative_path).scalar_subquery()

    for start in range(0, len(paths), MIRROR_LOOKUP_CHUNK):
        session.execute(update(table).where(
            table.c.run_id == context.run_id, table.c.share_id == share_id,
            table.c.relative_path.in_(paths[start:start + MIRROR_LOOKUP_CHUNK]))
            .values(state=FileState.SKIPPED, owner=carried("owner"),
                    hash_algorithm=carried("hash_algorithm")))


def _row(context: _Context, share_id: int, path: str, is_dir: bool, size: int, creation: int,
         last_write: int, last_access: int, change: int, attributes: int) -> dict[str, Any]:
    return {
        "share_id": share_id, "run_id": context.run_id, "relative_path": path, "is_dir": is_dir,
        "size": 0 if is_dir else size, "creation_time": creation, "last_write_time": last_write,
        "last_access_time": last_access, "change_time": change, "attributes": attributes,
        "state": FileState.SCANNED,
    }


def _record(context: _Context, share_id: int, entry: DirEntry) -> dict[str, Any]:
    return _row(context, share_id, entry.path, entry.is_dir, entry.size, entry.creation_time,
                entry.last_write_time, entry.last_access_time, entry.change_time, entry.attributes)


def _root_record(context: _Context, share_id: int, tree: SmbTree) -> dict[str, Any]:
    """The share root's own record (path ''): its metadata is copied last."""
    basic = md.stat(tree, "").basic
    return _row(context, share_id, "", True, 0, basic.creation_time, basic.last_write_time,
                basic.last_access_time, basic.change_time, basic.attributes)


def _source_folders(context: _Context, channel: FastChannel, errors: list[WalkError],
                    counts: dict[str, int], baseline: _Baseline | None) -> Iterator[tuple[str, list[DirEntry]]]:
    """(folder, its entries) for every folder of the source share, SMS's system folders at
    its root left out (unless the run includes them, they are neither yielded nor
    entered), several folders listed at once (common.smb.walk.PipelinedWalker). The
    baseline's clean folders are neither yielded nor entered."""
    def top_system_folder(entry: DirEntry) -> bool:
        return "\\" not in entry.path and context.options.is_system_folder(entry.path)

    clean = {} if baseline is None else baseline.clean
    walker = PipelinedWalker(channel, "", depth=WALK_DEPTH, roots=None if baseline is None else baseline.roots,
                             enter=lambda entry: not top_system_folder(entry) and _refusal(entry) is None
                             and entry.path not in clean)
    try:
        for folder, entries in walker.folders():
            if not folder:
                kept = [entry for entry in entries if not top_system_folder(entry)]
                counts["excluded"] += len(entries) - len(kept)
                entries = kept
            yield folder, entries
    finally:
        errors.extend(walker.errors)
        counts["listed"] += walker.directories_listed


def _already_recorded(session: Session, context: _Context, share_id: int, paths: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(paths), MIRROR_LOOKUP_CHUNK):
        records = run_records(context.run_id, share_id, paths[start:start + MIRROR_LOOKUP_CHUNK]).c
        found.update(session.scalars(select(records.relative_path)))
    return found


# A name that needs no closer look: no separator, colon, NUL or UTF-16 surrogate ('.' and
# '..' are looked at apart).
_PLAIN_NAME = re.compile("[^\\\\/:\x00\ud800-\udfff]+")


def _refusal(entry: DirEntry) -> WalkError | None:
    """A walk error for an entry that must not be transferred: a path that could leave the
    destination's root (common.smb.paths), a name the job database cannot store (an
    unpaired UTF-16 surrogate; the error names it as an ASCII escape), or a path longer
    than a file record holds (common.models.MAX_PATH_BYTES). None otherwise.

    The walk does not enter a refused folder, so the path of an entry it yields is safe
    up to the entry's own name: a plain name (``_PLAIN_NAME``) and a short enough path
    need nothing more, which keeps this cheap for the millions of ordinary entries.
    """
    name, path = entry.name, entry.path
    if _PLAIN_NAME.fullmatch(name) and name != "." and name != ".." and not path_too_long(path):
        return None
    try:
        safe_relative_path(path)
        path.encode("utf-8")
    except UnsafePath as exc:
        return WalkError(ascii(path), 0, exc.status_name, str(exc))
    except UnicodeEncodeError:
        return WalkError(ascii(path), 0, "UNSUPPORTED_NAME",
                         "refused a name holding an unpaired UTF-16 surrogate")
    if path_too_long(path):
        return WalkError(path, 0, PATH_TOO_LONG,
                         f"refused a path of {len(path.encode('utf-8'))} bytes of UTF-8, longer than "
                         f"the {MAX_PATH_BYTES} a file record holds (nothing below it is walked)")
    return None


def _parent(path: str) -> str:
    return path.rpartition("\\")[0]


def _walk_and_dispatch(context: _Context, target: _ShareTarget, tree: SmbTree,
                       publish: Publisher, say: Progress, *, resuming: bool = False,
                       baseline: _Baseline | None = None, recorder: _UnchangedRecorder | None = None,
                       digests: host_listing.FolderDigestWriter | None = None) -> _MirrorWork | None:
    """Walk the share and dispatch its file batches; with ``resuming``, entries this run
    already recorded (a walk cut short by a dead driver) are not recorded again.

    With ``baseline`` (a ``_Baseline`` being filled in a thread while the walk goes on),
    a source entry is compared as soon as the destination's listing of its folder has
    ended (until then it waits); unchanged files are recorded ``skipped`` in bulk and
    never dispatched;
    folders whose metadata neither side changed, and in which nothing is copied or
    deleted this run, are recorded ``skipped`` too, so the folder stage leaves them
    alone. Returns the mirror's work then (None without a baseline). ``recorder`` writes
    the references (with a baseline); ``digests`` is told what each folder holds
    (``host_listing.FolderDigestWriter``).
    """
    settings = get_settings()
    files: list[dict[str, Any]] = []
    unchanged: list[int] = []  # record ids of unchanged files not handed over yet
    unchanged_bytes = 0
    root = _root_record(context, target.share_id, tree)
    directories: list[dict[str, Any]] = [root]
    pending_bytes = 0
    batches = 0
    waiting: dict[str, list[DirEntry]] = {}  # folders walked before they could be compared
    clean_directories: set[str] = set()
    touched: set[str] = set()  # folders in which something is written or deleted

    def fresh(session: Session, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not resuming or not rows:
            return rows
        known = _already_recorded(session, context, target.share_id,
                                  [row["relative_path"] for row in rows])
        return [row for row in rows if row["relative_path"] not in known]

    def flush_directories(session: Session) -> None:
        if directories:
            rows = fresh(session, directories)
            if rows:
                bulk_insert_file_records(session, rows)
            directories.clear()
        nonlocal unchanged_bytes
        if unchanged:
            # Handed over once the folders (the share root first of all) are committed: a
            # share with references in this run always has records of its own.
            after_commit(session, functools.partial(recorder.record, unchanged[:], unchanged_bytes))
            unchanged.clear()
            unchanged_bytes = 0

    def flush_batch() -> None:
        nonlocal pending_bytes, batches
        context.check_deadline()
        with session_scope() as session:
            _check_cancelled(session, context.run_id)
            flush_directories(session)
            rows = fresh(session, files)
            if len(rows) != len(files):
                files[:] = rows
                pending_bytes = sum(row["size"] for row in rows)
            if files:
                batch = Batch(run_id=context.run_id, share_id=target.share_id,
                              file_count=len(files), byte_count=pending_bytes)
                session.add(batch)
                session.flush()
                bulk_insert_file_records(session, ({**row, "batch_id": batch.id} for row in files))
                session.execute(update(TransferRun).where(TransferRun.id == context.run_id).values(
                    files_total=TransferRun.files_total + len(files),
                    bytes_total=TransferRun.bytes_total + pending_bytes))
                dispatch_batch(session, batch, publish, task_name=COPY_TASK, queue=context.queue)
                batches += 1
        files.clear()
        pending_bytes = 0

    def add_directory(row: dict[str, Any]) -> None:
        directories.append(row)
        if len(directories) >= DIRECTORY_BATCH_MAX:
            with session_scope() as session:
                flush_directories(session)

    def add_unchanged(record_ids: Iterable[int], size: int) -> None:
        nonlocal unchanged_bytes
        unchanged.extend(record_ids)
        unchanged_bytes += size
        if len(unchanged) >= UNCHANGED_CHUNK:
            with session_scope() as session:
                _check_cancelled(session, context.run_id)
                flush_directories(session)

    def take_clean() -> None:
        """Record the entries of the folders the hosts' listings show unchanged: files by
        reference, folders as unchanged, all from the previous run's records."""
        previous = baseline.previous
        for folder, recorded in baseline.clean.items():
            for path in baseline.subfolders.get(folder, ()):
                before = previous[path]
                clean_directories.add(path)
                add_directory(_row(context, target.share_id, path, True, 0, before[7], before[2],
                                   before[8], before[3], before[4]))
            if not recorder.speculating:
                add_unchanged(recorded.file_ids, recorded.file_bytes)
            if digests is not None:
                digests.carry(folder, recorded)
        if recorder.speculating:
            with session_scope() as session:
                flush_directories(session)  # the share's root first of all
                after_commit(session, functools.partial(recorder.settle, dict(baseline.clean)))

    def compare_directory(row: dict[str, Any]) -> None:
        path = row["relative_path"]
        there = baseline.destination.get(path)
        if baseline.unchanged(path, True, 0, row["last_write_time"], row["change_time"],
                              row["attributes"]) is not None:
            clean_directories.add(path)
        elif there is None and path:
            touched.add(_parent(path))  # it will be created in its parent

    def take(folder: str, entries: list[DirEntry]) -> None:
        """Record the entries of ``folder``: refused ones as walk errors, folders, unchanged
        files (by reference), and the other files into batches."""
        nonlocal pending_bytes
        kept: list[tuple[str, int, int, int]] = []  # unchanged files, for ``digests``
        representable = True
        for entry in entries:
            refusal = _refusal(entry)
            if refusal is not None:
                walk_errors.append(refusal)
                representable = False
                continue
            if entry.is_dir:
                row = _record(context, target.share_id, entry)
                if baseline is not None:
                    compare_directory(row)
                add_directory(row)
                continue
            record_id = None if baseline is None else baseline.unchanged(
                entry.path, False, entry.size, entry.last_write_time, entry.change_time, entry.attributes)
            if record_id is not None:
                add_unchanged((record_id,), entry.size)
                kept.append((entry.name, entry.size, entry.last_write_time, record_id))
                continue
            touched.add(folder)
            files.append(_record(context, target.share_id, entry))
            pending_bytes += entry.size
            if len(files) >= min(settings.batch_max_files, FIRST_BATCH_FILES << batches) \
                    or pending_bytes >= settings.batch_max_bytes:
                flush_batch()
        if digests is not None:
            digests.walked(folder, kept, representable)

    def compare_ready() -> None:
        """Take the waiting folders that can now be compared."""
        baseline.check()
        for folder in [folder for folder in waiting if baseline.ready(folder)]:
            take(folder, waiting.pop(folder))

    walked = 0
    next_look = COMPARE_CHECK_EVERY
    walk_errors: list[WalkError] = []
    counts = {"listed": 0, "excluded": 0}
    channel = FastChannel.attach(tree.connection, tree.session, tree.tree)
    try:
        if baseline is not None:
            take_clean()
        for folder, entries in _source_folders(context, channel, walk_errors, counts, baseline):
            if baseline is None or baseline.ready(folder):
                take(folder, entries)
            else:
                waiting[folder] = entries
            walked += len(entries)
            if waiting and walked >= next_look:
                compare_ready()
                next_look = walked + COMPARE_CHECK_EVERY
        if baseline is not None:
            baseline.wait()
            compare_directory(root)
            compare_ready()
    finally:
        try:
            channel.release()
        except SmbError:
            pass
    mirror = None
    if baseline is not None:
        mirror = baseline.mirror([error.path for error in walk_errors], context.options)
        touched.update(_parent(entry.path) for entry in mirror.extras)
    flush_batch()
    skipped = sorted(clean_directories - touched)
    try:
        with session_scope() as session:
            if skipped:
                _skip_directories(session, context, target.share_id, baseline.run_id, skipped)
            run = session.get(TransferRun, context.run_id)
            for error in walk_errors:
                _event(session, run, EVENT_WALK_ERROR,
                       f"{error.status_name}: {error.message}: {target.name}\\{error.path}",
                       level=EventLevel.ERROR, server_id=context.source_id, share=target.name,
                       share_id=target.share_id, path=error.path, status=error.status_name)
    finally:
        if recorder is not None:
            recorder.wait()  # meanwhile its thread went on writing the references
    excluded = f", {counts['excluded']} system folders left out" if counts["excluded"] else ""
    compared_note = "" if baseline is None else (
        f", {len(skipped)} unchanged folders and the unchanged files recorded without a batch"
        + (f" ({len(baseline.clean)} folders found unchanged on the hosts' own listings)"
           if baseline.clean else ""))
    say(f"{target.name}: walked {counts['listed']} directories, "
        f"{batches} file batches dispatched, {len(walk_errors)} walk errors{excluded}{compared_note}")
    return mirror


def batch_state_counts(session: Session, run_id: int) -> dict[BatchState, int]:
    """How many of the run's batches are in each state."""
    rows = session.execute(select(Batch.state, func.count()).where(Batch.run_id == run_id)
                           .group_by(Batch.state)).all()
    return {state: count for state, count in rows}


def _wait_for_batches(context: _Context, publish: Publisher, poll_interval: float,
                      say: Progress, what: str, *, check_deadline: bool = True) -> None:
    """Block until no batch of the run is queued or running, reaping lost leases.

    Past the run's maximum duration (with ``check_deadline``) raises DurationExceeded.
    """
    last_reap = time.monotonic()
    last_report = ""
    outage_since: float | None = None
    while True:
        if check_deadline:
            context.check_deadline()
        try:
            with session_scope() as session:
                _check_cancelled(session, context.run_id)
                counts = batch_state_counts(session, context.run_id)
            outage_since = None
        except (OperationalError, InterfaceError):
            # The database restarts or fails over: keep waiting, up to a limit.
            outage_since = outage_since or time.monotonic()
            if time.monotonic() - outage_since > DATABASE_OUTAGE_GRACE:
                raise
            logger.warning("run %s: job database unreachable; waiting", context.run_id)
            time.sleep(max(poll_interval, 1.0))
            continue
        open_batches = counts.get(BatchState.QUEUED, 0) + counts.get(BatchState.RUNNING, 0)
        report = (f"{what}: {counts.get(BatchState.DONE, 0)} batches done, "
                  f"{counts.get(BatchState.RUNNING, 0)} running, {counts.get(BatchState.QUEUED, 0)} "
                  f"queued, {counts.get(BatchState.FAILED, 0)} failed")
        if report != last_report:
            say(report)
            last_report = report
        if not open_batches:
            return
        if time.monotonic() - last_reap >= REAP_INTERVAL:
            with session_scope() as session:
                reaped = reap_expired_leases(session, publish)
            if reaped:
                say(f"re-dispatched batches whose lease expired: {reaped}")
            last_reap = time.monotonic()
        time.sleep(poll_interval)


# --- mirror ----------------------------------------------------------------------------

def run_events(session: Session, run_id: int, job_id: int, kinds: Iterable[str]) -> list[Event]:
    """The events of the given kinds that run ``run_id`` recorded, oldest first."""
    events = session.scalars(select(Event).where(Event.job_id == job_id, Event.kind.in_(tuple(kinds)))
                             .order_by(Event.id))
    return [event for event in events if (event.detail or {}).get("run_id") == run_id]


def _walk_error_paths(session: Session, context: _Context, target: _ShareTarget) -> list[str]:
    return [event.detail["path"] for event in
            run_events(session, context.run_id, context.job_id, (EVENT_WALK_ERROR,))
            if event.detail.get("share_id") == target.share_id]


def _under(path: str, roots: list[str]) -> bool:
    return any(root == "" or path == root or path.startswith(root + "\\") for root in roots)


def _destination_entries(tree: SmbTree, errors: list) -> Iterator[DirEntry]:
    """Every entry of a destination share except PreExistingData, which is not even listed;
    directories that cannot be listed are appended to ``errors``."""
    top = [entry for entry in dest_ops.list_root(tree) if not dest_ops.is_protected(entry.path)]
    for entry in top:
        yield entry
        if entry.is_dir and not entry.is_reparse_point:
            walker = ShareWalker(tree, entry.path)
            yield from walker
            errors.extend(walker.errors)


def _mirror_share(context: _Context, target: _ShareTarget, destination: Server,
                  say: Progress, work: _MirrorWork | None = None) -> None:
    """Delete destination entries the source no longer has (PreExistingData untouched).

    ``work``: what planning found by listing the destination beside the source walk;
    without it (a resumed run, a share without a previous run to compare with) the
    destination is walked here and compared with this run's records.
    """
    if work is not None:
        _delete_extras(context, target, destination, say, work.extras, work.errors)
        return
    with session_scope() as session:
        unlisted = _walk_error_paths(session, context, target)
    tree = open_tree(server_endpoint(destination, target.destination_share))
    extras: list[DirEntry] = []
    pruned: set[str] = set()
    pending: list[DirEntry] = []

    def resolve() -> None:
        if not pending:
            return
        records = run_records(context.run_id, target.share_id, [entry.path for entry in pending]).c
        with session_scope() as session:
            known = dict(session.execute(select(records.relative_path, records.is_dir)).all())
        for entry in pending:
            is_dir = entry.is_dir and not entry.is_reparse_point
            if known.get(entry.path) is None or known[entry.path] != is_dir:
                extras.append(entry)
                if is_dir:
                    pruned.add(entry.path)
        pending.clear()

    walk_errors: list = []
    try:
        last_parent = None
        for entry in _destination_entries(tree, walk_errors):
            parent = entry.path.rpartition("\\")[0]
            if parent != last_parent or len(pending) >= MIRROR_LOOKUP_CHUNK:
                resolve()
                last_parent = parent
            if parent in pruned or dest_ops.is_protected(entry.path) or _under(entry.path, unlisted) \
                    or context.options.is_system_folder(entry.path):
                if entry.is_dir:
                    pruned.add(entry.path)
                continue
            pending.append(entry)
        resolve()
    finally:
        tree.close()
    _delete_extras(context, target, destination, say, extras, walk_errors)


def _delete_extras(context: _Context, target: _ShareTarget, destination: Server, say: Progress,
                   extras: list[DirEntry], walk_errors: list[WalkError]) -> None:
    """Delete the mirror's ``extras`` from the destination share; record what was deleted,
    what could not be, and the destination folders that could not be listed."""
    deleted, failures = 0, []
    if extras:
        tree = open_tree(server_endpoint(destination, target.destination_share))
        try:
            for entry in extras:
                try:
                    deleted += dest_ops.delete_entry(tree, entry)
                except SmbFileError as exc:
                    failures.append((entry.path, exc))
        finally:
            tree.close()
    with session_scope() as session:
        run = session.get(TransferRun, context.run_id)
        if extras:
            _event(session, run, EVENT_MIRROR_DELETE,
                   f"{target.destination_share}: {deleted} entries deleted that the source no longer has",
                   server_id=context.destination_id, share=target.name, share_id=target.share_id,
                   paths=[entry.path for entry in extras[:1000]], deleted=deleted)
        for path, exc in failures:
            _event(session, run, EVENT_MIRROR_ERROR, f"{exc.status_name}: cannot delete {path}",
                   level=EventLevel.ERROR, server_id=context.destination_id, share=target.name,
                   share_id=target.share_id, path=path, status=exc.status_name)
        for error in walk_errors:
            _event(session, run, EVENT_MIRROR_ERROR,
                   f"{error.status_name}: cannot list {error.path} to mirror it",
                   level=EventLevel.ERROR, server_id=context.destination_id, share=target.name,
                   share_id=target.share_id, path=error.path, status=error.status_name)
    say(f"{target.name}: mirror deleted {deleted} destination entries, {len(failures)} failures")


# --- directories -----------------------------------------------------------------------

def _depth():
    """A record's depth: backslashes in its path; the share root ('') is -1, below all."""
    path = FileRecord.relative_path
    return case((path == "", -1),
                else_=func.length(path) - func.length(func.replace(path, "\\", "")))


def directory_waves(levels: list[tuple[int, list[int]]]) -> list[list[list[int]]]:
    """Cut directory ids grouped by depth (deepest level first) into waves of batches.

    Waves run one after the other; the batches of one wave run in parallel. A level of
    more than DIRECTORY_PARALLEL_MIN directories is a wave of its own, split into up to
    DIRECTORY_PARALLELISM batches of at least DIRECTORY_BATCH_MIN (directories of one
    depth never contain each other), so that several workers share the folders' metadata
    even when a level is narrow: over a slow link each folder costs several round trips,
    and one batch for a level of a few dozen folders was the serial tail of a run.
    Smaller levels are merged, deepest first, into one batch (the copy engine applies a
    batch's directories deepest first), so a deep, narrow tree costs one batch, not one
    wave per level. The share root (depth -1) is always a last wave of its own: the copy
    engine ranks it with the top-level folders, and creating an empty top-level folder
    after the root's times were set would move them.
    """
    waves: list[list[list[int]]] = []
    group: list[int] = []
    for depth_value, ids in levels:
        if depth_value < 0 or len(ids) > DIRECTORY_PARALLEL_MIN:
            if group:
                waves.append([group])
                group = []
            if depth_value < 0:
                waves.append([ids])
                continue
            size = min(DIRECTORY_BATCH_MAX,
                       max(DIRECTORY_BATCH_MIN, -(-len(ids) // DIRECTORY_PARALLELISM)))
            waves.append([ids[start:start + size] for start in range(0, len(ids), size)])
            continue
        if group and len(group) + len(ids) > DIRECTORY_BATCH_MAX:
            waves.append([group])
            group = []
        group = group + ids
    if group:
        waves.append([group])
    return waves


def _copy_directories(context: _Context, target: _ShareTarget, publish: Publisher,
                      poll_interval: float, say: Progress) -> None:
    """Dispatch the share's directory records deepest first, in waves (directory_waves).

    Only (id, depth) pairs of the directories are held, never their paths. Folders
    planning recorded unchanged (state skipped) are left alone. Waves are polled every
    DIRECTORY_POLL_INTERVAL at most: a wave's batches are short.
    """
    depth = _depth()
    levels: dict[int, list[int]] = {}
    with session_scope() as session:
        rows = session.execute(
            select(FileRecord.id, depth).where(
                FileRecord.run_id == context.run_id, FileRecord.share_id == target.share_id,
                FileRecord.is_dir.is_(True), FileRecord.batch_id.is_(None),
                FileRecord.state == FileState.SCANNED)
            .order_by(depth.desc(), FileRecord.id))
        for record_id, level in rows:
            levels.setdefault(level, []).append(record_id)
    waves = directory_waves(sorted(levels.items(), key=lambda item: -item[0]))
    for wave in waves:
        context.check_deadline()
        with session_scope() as session:
            for ids in wave:
                batch = Batch(run_id=context.run_id, share_id=target.share_id, file_count=len(ids))
                session.add(batch)
                session.flush()
                for start in range(0, len(ids), 500):
                    session.execute(update(FileRecord).where(FileRecord.id.in_(ids[start:start + 500]))
                                    .values(batch_id=batch.id).execution_options(synchronize_session=False))
                dispatch_batch(session, batch, publish, task_name=COPY_TASK, queue=context.queue)
        _wait_for_batches(context, publish, min(poll_interval, DIRECTORY_POLL_INTERVAL),
                          lambda line: None, "directories")
    count = sum(len(ids) for ids in levels.values())
    say(f"{target.name}: metadata of {count} directories applied in {len(waves)} waves")


# --- the end ---------------------------------------------------------------------------

def _finish(context: _Context) -> RunState:
    with session_scope() as session:
        records = run_records(context.run_id).c
        rows = session.execute(
            select(records.state, records.is_dir, func.count(), func.coalesce(func.sum(records.size), 0))
            .group_by(records.state, records.is_dir)).all()
        files: dict[FileState, int] = {}
        bytes_by_state: dict[FileState, int] = {}
        problems = 0
        for state, is_dir, count, size in rows:
            if state in (FileState.FAILED, FileState.MISMATCH, FileState.SCANNED):
                problems += count
            if not is_dir:
                files[state] = files.get(state, 0) + count
                bytes_by_state[state] = bytes_by_state.get(state, 0) + int(size)
        error_events = run_events(session, context.run_id, context.job_id, ERROR_EVENTS)
        run_errors = len(error_events)
        stopped = next((event.message for event in error_events
                        if event.kind == EVENT_MAX_DURATION), None)
        _check_cancelled(session, context.run_id)
        run = session.get(TransferRun, context.run_id)
        run.files_total = sum(files.values())
        run.files_copied = files.get(FileState.COPIED, 0) + files.get(FileState.VERIFIED, 0)
        run.files_skipped = files.get(FileState.SKIPPED, 0)
        run.files_failed = (files.get(FileState.FAILED, 0) + files.get(FileState.MISMATCH, 0)
                            + files.get(FileState.SCANNED, 0))
        run.bytes_total = sum(bytes_by_state.values())
        run.bytes_copied = (bytes_by_state.get(FileState.COPIED, 0)
                            + bytes_by_state.get(FileState.VERIFIED, 0))
        run.ended_at = utcnow()
        transferred = sum(count for state, _is_dir, count, _size in rows if state in ARRIVED_STATES)
        if (problems or run_errors) and not transferred and not stopped:
            # Nothing at all reached the destination (e.g. it refused the credentials):
            # that is a failure, not a run that merely "completed with errors". A run its
            # maximum duration stopped did what it was allowed to: completed with errors.
            run.state = RunState.FAILED
            run.error = (f"nothing transferred: {problems} entries not transferred, "
                         f"{run_errors} walk, share or mirror errors")
        elif problems or run_errors:
            run.state = RunState.COMPLETED_WITH_ERRORS
            run.error = (f"completed with errors: {problems} entries not transferred, "
                         f"{run_errors} walk, share or mirror errors")
            if stopped:
                run.error = f"{stopped}; {run.error}"
        else:
            run.state = RunState.SUCCEEDED
            run.error = ""
        return run.state
