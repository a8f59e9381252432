"""The proxy worker's transfer task: copy one batch of a transfer run with the data plane.

``copy_batch(batch_id)`` claims the batch's lease in the job database (common.leases),
keeps renewing it from a heartbeat thread while it copies, reads everything else from
the database - the run's options, the source and destination servers, their encrypted
credentials (decrypted here with this worker's own key), the batch's file records - and
hands the entries to the copy engine (common.smb.copy). Failed entries are tried again
``retries`` times, ``retry_delay`` seconds apart.

Each entry's owner SID (the log's owner column) comes from the source security descriptor
the engine read while copying it and returned in its ``FileResult``: the source is read
once. When the run migrated local accounts (a ``SidMap`` row for the run: only its
id-bearing run travels, never a credential), every descriptor naming a mapped SID is
rewritten with common.smb.security and set on the destination entry, so ACLs name the
destination's accounts. A file the engine skips as unchanged has its descriptor set too
when the destination's differs (the engine compares data, times and attributes only).

A batch claimed after its run's maximum duration has passed is given up
(``MAX_DURATION_EXCEEDED`` per file). A file whose source moved while it was copied is
failed by the engine (SOURCE_CHANGED) and tried again like any failed entry. Per-file
results (state copied / verified / skipped / mismatch / failed, hashes, NTSTATUS name and
message) are written in bulk - PostgreSQL: COPY into a temporary table and one
``UPDATE ... FROM``; SQLite: one UPDATE statement run for every row (executemany) - in the
same transaction that completes the batch, so a worker that lost its lease changes
nothing. A batch delivered twice is copied once: the second claim fails. A locked file
never blocks the batch: it is recorded failed and the next run picks it up. A batch that
cannot be copied at all (the source refuses the logon ...) has every file recorded failed
with the reason, and a batch claimed more than ``MAX_ATTEMPTS`` times (its workers keep
dying) is given up the same way, so a run always ends.

Tasks here receive only a batch id through the broker; they must never receive a
credential in a message, never log one, and never import the orchestrator.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from celery import shared_task
from celery.utils.log import get_task_logger
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from common.crypto import InvalidToken
from common.db import copy_text, session_scope
from common.endpoints import server_endpoint
from common.leases import claim_batch, complete_batch, lease_duration, renew_lease
from common.models import (
    ARRIVED_STATES,
    Batch,
    FileRecord,
    FileState,
    Pairing,
    RunState,
    Server,
    Share,
    SidMap,
    TransferRun,
    run_records,
    utcnow,
)
from common.smb import copy as engine
from common.smb import fastpath as fp
from common.smb import messages as m
from common.smb import metadata as md
from common.smb.connection import SmbEndpoint, get_tree
from common.smb.errors import SmbFileError
from common.smb.paths import UnsafePath, safe_relative_path
from common.smb.security import owner_sid, translate_descriptor
from common.transfer_options import TransferOptions
from proxy_worker.tasks import LeaseLost, worker_identity

logger = get_task_logger(__name__)

COPY_TASK_NAME = "proxy_worker.copy_tasks.copy_batch"
HASH_LOOKUP_CHUNK = 500
# A batch claimed more often than this (each worker died or lost the lease) is failed.
MAX_ATTEMPTS = 5
MAX_DURATION_CODE = "MAX_DURATION_EXCEEDED"
SECURITY_TRANSLATION_FAILED = "SECURITY_TRANSLATION_FAILED"
# How long a worker keeps trying to claim a batch while the job database is unreachable.
CLAIM_OUTAGE_GRACE = 60.0
# Columns of a file record that a batch's results overwrite, and those (what was copied)
# that a failed entry leaves as the walk recorded them.
RESULT_COLUMNS = ("state", "owner", "hash_algorithm", "source_hash", "destination_hash",
                  "error_code", "error_message")
COPIED_COLUMNS = ("size", "creation_time", "last_write_time", "last_access_time", "attributes")
# The temporary table a batch's results are COPied into on PostgreSQL (dropped at commit).
RESULTS_TABLE = "batch_file_results"


class LeaseKeeper:
    """A thread renewing ``owner``'s lease on a batch until stopped; ``lost`` tells if it failed."""

    def __init__(self, batch_id: int, owner: str):
        self.batch_id = batch_id
        self.owner = owner
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{batch_id}", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        interval = max(lease_duration().total_seconds() / 3, 0.5)
        while not self._stop.wait(interval):
            try:
                with session_scope() as session:
                    if not renew_lease(session, self.batch_id, self.owner):
                        self.lost = True
                        return
            except Exception:  # noqa: BLE001 - a database hiccup: try again next round
                logger.warning("batch %s: lease renewal failed; retrying", self.batch_id)

    def check(self) -> None:
        """Raise LeaseLost if another worker may have taken the batch over."""
        if self.lost:
            raise LeaseLost(f"batch {self.batch_id}: lease lost while copying")


@dataclass(frozen=True)
class _Work:
    run_id: int
    cancelled: bool
    share_id: int
    attempt: int
    options: TransferOptions
    source: SmbEndpoint
    destination: SmbEndpoint
    records: list[tuple[int, str, bool]]  # (id, relative path, is_dir)
    recorded_hashes: dict[str, str]
    sid_map: dict[str, str]
    overdue: bool  # the run's maximum duration has passed


def _previous_hashes(session, run: TransferRun, share_id: int, paths: list[str]) -> dict[str, str]:
    """Source hashes the pairing's previous run recorded for ``paths`` of this share."""
    previous = session.scalar(select(func.max(TransferRun.id)).where(
        TransferRun.pairing_id == run.pairing_id, TransferRun.id < run.id))
    if previous is None:
        return {}
    found: dict[str, str] = {}
    for start in range(0, len(paths), HASH_LOOKUP_CHUNK):
        records = run_records(previous, share_id, paths[start:start + HASH_LOOKUP_CHUNK]).c
        found.update(session.execute(select(records.relative_path, records.source_hash).where(
            records.source_hash.is_not(None),
            records.state.in_(ARRIVED_STATES))).all())
    return found


def _load(batch_id: int) -> _Work:
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        run = session.get(TransferRun, batch.run_id)
        pairing = session.get(Pairing, run.pairing_id)
        share = session.get(Share, batch.share_id)
        options = TransferOptions.from_json(run.options)
        source = server_endpoint(session.get(Server, pairing.source_server_id), share.name)
        destination = server_endpoint(session.get(Server, pairing.destination_server_id),
                                      options.destination_share(share.name))
        records = [tuple(row) for row in session.execute(
            select(FileRecord.id, FileRecord.relative_path, FileRecord.is_dir)
            .where(FileRecord.batch_id == batch_id).order_by(FileRecord.id)).all()]
        hashes = _previous_hashes(session, run, share.id, [path for _id, path, _d in records])
        sid_map = session.scalar(select(SidMap.entries).where(SidMap.run_id == run.id)) or {}
        overdue = bool(options.max_duration and run.started_at is not None
                       and (utcnow() - run.started_at).total_seconds() > options.max_duration)
        return _Work(run.id, run.state == RunState.CANCELLED, share.id, batch.attempt, options,
                     source, destination, records, hashes, dict(sid_map), overdue)


def _copy(work: _Work, indexes: list[int]) -> list[engine.FileResult]:
    """Copy the records at ``indexes``; a path that could leave the share (common.smb.paths)
    is refused with UNSAFE_PATH and never reaches the copy engine."""
    refused: dict[int, engine.FileResult] = {}
    for i in indexes:
        try:
            safe_relative_path(work.records[i][1])
        except UnsafePath as exc:
            refused[i] = engine.FileResult(path=work.records[i][1], is_directory=work.records[i][2],
                                           outcome=engine.Outcome.FAILED,
                                           status_name=exc.status_name, message=str(exc))
    safe = [i for i in indexes if i not in refused]
    entries = [engine.FileEntry(work.records[i][1], work.records[i][2],
                                work.recorded_hashes.get(work.records[i][1])) for i in safe]
    copied = dict(zip(safe, engine.copy_batch(work.source, work.destination, entries,
                                              work.options.copy_options()) if entries else []))
    return [refused[i] if i in refused else copied[i] for i in indexes]


def _sleep(seconds: float, keeper: LeaseKeeper) -> None:
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        keeper.check()
        time.sleep(min(remaining, 1.0))


def _copy_with_retries(work: _Work, keeper: LeaseKeeper) -> list[engine.FileResult]:
    results: list[engine.FileResult | None] = [None] * len(work.records)
    todo = list(range(len(work.records)))
    for round_number in range(work.options.retries + 1):
        if round_number:
            _sleep(work.options.retry_delay, keeper)
        keeper.check()
        try:
            copied = _copy(work, todo)
        except (OSError, ValueError) as exc:
            # A server unreachable (restarting, network cut; smbprotocol wraps the socket's
            # error in a ValueError): the whole round failed, retry it.
            unreachable = isinstance(exc, OSError) or isinstance(exc.__cause__, OSError)
            if not unreachable or round_number == work.options.retries:
                raise
            logger.warning("batch round %s: a server is unreachable (%s); retrying",
                           round_number + 1, exc)
            continue
        for index, result in zip(todo, copied):
            results[index] = result
        todo = [i for i in todo if results[i].outcome == engine.Outcome.FAILED]
        if not todo:
            break
        logger.info("batch files failed in round %s: %s", round_number + 1, len(todo))
    return results


class _Channel:
    """A FastChannel on this process's pooled session of ``endpoint``, for one pass."""

    def __init__(self, endpoint: SmbEndpoint):
        tree = get_tree(endpoint)
        self.channel = fp.FastChannel.attach(tree.connection, tree.session, tree.tree)

    def __enter__(self) -> fp.FastChannel:
        return self.channel

    def __exit__(self, *exc) -> None:
        self.channel.release()


def _source_descriptors(results: list[engine.FileResult]) -> dict[int, bytes]:
    """{result index: the source SD the engine read while copying} of the entries not failed."""
    return {index: result.security_descriptor for index, result in enumerate(results)
            if result.outcome != engine.Outcome.FAILED and result.security_descriptor}


def _settle_descriptors(work: _Work, descriptors: dict[int, bytes],
                        results: list[engine.FileResult]) -> None:
    """Set on the destination, unless it already holds it: the SID-translated descriptor of
    each entry whose source SD names a mapped SID, and the descriptor of each file the
    engine skipped as unchanged (same size, last-write time and attributes), whose SD the
    engine does not compare: the planner dispatches such a file when its metadata moved
    (a new descriptor sets no last-write time). A failure fails that entry."""
    wanted: dict[int, bytes] = {}
    for index, descriptor in descriptors.items():
        result = results[index]
        try:
            translated = translate_descriptor(descriptor, work.sid_map) if work.sid_map else descriptor
        except ValueError as exc:
            result.outcome, result.status_name = engine.Outcome.FAILED, SECURITY_TRANSLATION_FAILED
            result.message = f"security descriptor of {result.path!r} not translated: {exc}"
            continue
        # Otherwise the engine wrote it with the entry (a folder's it compares itself).
        if translated is not descriptor or (result.outcome == engine.Outcome.SKIPPED and not result.is_directory):
            wanted[index] = translated
    if not wanted:
        return
    secinfo = md.security_information(work.options.copy_sacl)
    sacl = fp.ACCESS_SYSTEM_SECURITY if work.options.copy_sacl else 0
    with _Channel(work.destination) as channel:
        for index, translated in wanted.items():
            result = results[index]
            options = fp.FILE_DIRECTORY_FILE if result.is_directory else fp.FILE_NON_DIRECTORY_FILE
            try:
                handle = channel.open(m.smb_path(result.path), fp.READ_CONTROL | fp.WRITE_DAC | fp.WRITE_OWNER
                                      | fp.SYNCHRONIZE | sacl, options=options)
                try:
                    if channel.query_security(handle, secinfo) != translated:
                        channel.set_security(handle, translated, secinfo)
                finally:
                    channel.close(handle, query=False)
            except SmbFileError as exc:
                result.outcome, result.status_name = engine.Outcome.FAILED, exc.status_name
                result.message = f"security descriptor not set on {result.path!r}: {exc}"


def _owners(work: _Work, results: list[engine.FileResult]) -> list[str | None]:
    """Owner SIDs of the batch's entries (None where unknown or failed), from the source
    descriptors the engine read while copying (no second pass over the source); the
    destination descriptors are settled first (``_settle_descriptors``)."""
    descriptors = _source_descriptors(results)
    if descriptors:
        _settle_descriptors(work, descriptors, results)
    owners: list[str | None] = [None] * len(results)
    for index, descriptor in descriptors.items():
        try:
            owners[index] = owner_sid(descriptor)
        except ValueError:
            logger.warning("unreadable security descriptor of %r", results[index].path)
    return owners


def _state(result: engine.FileResult, verify: bool) -> FileState:
    if result.outcome == engine.Outcome.SKIPPED:
        return FileState.SKIPPED
    if result.outcome == engine.Outcome.COPIED:
        if verify and result.destination_hash and result.destination_hash == result.source_hash:
            return FileState.VERIFIED
        return FileState.COPIED
    if result.message and "verify:" in result.message:
        return FileState.MISMATCH
    return FileState.FAILED


def _updates(work: _Work, results: list[engine.FileResult], owners: list[str | None]) -> list[dict]:
    """One row per record of the batch: its id, RESULT_COLUMNS and COPIED_COLUMNS (None for
    a failed entry, whose record keeps what the walk saw)."""
    rows = []
    for (record_id, _path, _is_dir), result, owner in zip(work.records, results, owners):
        copied = result.outcome != engine.Outcome.FAILED
        rows.append({
            "id": record_id,
            "state": _state(result, work.options.verify),
            "owner": owner,
            "hash_algorithm": result.hash_algorithm or None,
            "source_hash": result.source_hash,
            "destination_hash": result.destination_hash,
            "error_code": result.status_name,
            "error_message": result.message,
            # What was actually copied (a file may have changed since the walk saw it).
            "size": result.size if copied else None,
            "creation_time": result.creation_time if copied else None,
            "last_write_time": result.last_write_time if copied else None,
            "last_access_time": result.last_access_time if copied else None,
            "attributes": result.attributes if copied else None,
        })
    return rows


def _store_results(session: Session, rows: list[dict]) -> None:
    """Write the batch's per-file results (rows of ``_updates``) in the session's transaction.

    PostgreSQL: COPY into a temporary table dropped at commit, then one ``UPDATE ... FROM``
    it (psycopg2's executemany would send one UPDATE per file, a round trip each). Other
    databases (SQLite): one UPDATE statement, compiled once and executed for every row
    (executemany). A NULL in COPIED_COLUMNS leaves the record's value as it was.
    """
    connection = session.connection()
    table = FileRecord.__table__
    columns = ("id", *RESULT_COLUMNS, *COPIED_COLUMNS)
    if connection.dialect.name == "postgresql":
        column_list = ", ".join(columns)
        connection.exec_driver_sql(
            f"CREATE TEMPORARY TABLE {RESULTS_TABLE} ON COMMIT DROP AS "
            f"SELECT {column_list} FROM {table.name} WITH NO DATA")
        data = copy_text([tuple(row[name] for name in columns) for row in rows])
        cursor = connection.connection.driver_connection.cursor()
        try:
            cursor.copy_expert(f"COPY {RESULTS_TABLE} ({column_list}) FROM STDIN", data)
        finally:
            cursor.close()
        assignments = ([f"{name} = r.{name}" for name in RESULT_COLUMNS]
                       + [f"{name} = COALESCE(r.{name}, f.{name})" for name in COPIED_COLUMNS])
        connection.exec_driver_sql(f"UPDATE {table.name} AS f SET {', '.join(assignments)} "
                                   f"FROM {RESULTS_TABLE} AS r WHERE f.id = r.id")
        return
    values = {name: bindparam(f"new_{name}", type_=table.c[name].type) for name in RESULT_COLUMNS}
    values.update({name: func.coalesce(bindparam(f"new_{name}", type_=table.c[name].type), table.c[name])
                   for name in COPIED_COLUMNS})
    statement = table.update().where(table.c.id == bindparam("new_id")).values(values)
    connection.execute(statement, [{f"new_{name}": value for name, value in row.items()} for row in rows])


def _fail_all(batch_id: int, owner: str, code: str, message: str) -> bool:
    """Record every file of the batch failed with ``code`` and ``message`` and complete the
    batch failed; False (nothing written) when the lease is no longer ours."""
    with session_scope() as session:
        session.execute(update(FileRecord).where(FileRecord.batch_id == batch_id).values(
            state=FileState.FAILED, error_code=code, error_message=message)
            .execution_options(synchronize_session=False))
        if not complete_batch(session, batch_id, owner, files_done=0, bytes_done=0, failed=True,
                              error=message):
            session.rollback()
            return False
    return True


def _describe(exc: Exception) -> tuple[str, str]:
    """(error code, message) for an exception that failed a whole batch."""
    if isinstance(exc, InvalidToken):
        return ("CREDENTIAL_UNREADABLE", "the stored credential cannot be decrypted with this "
                "worker's key (SMS_SECRET_KEY or the key file differs from the orchestrator's)")
    return getattr(exc, "status_name", None) or type(exc).__name__, str(exc) or type(exc).__name__


def _give_up(batch_id: int, owner: str, code: str, message: str) -> str:
    return "failed" if _fail_all(batch_id, owner, code, message) else "lease lost"


def _claim(batch_id: int, owner: str) -> bool:
    """claim_batch, waiting out a job-database outage of up to CLAIM_OUTAGE_GRACE seconds:
    a message consumed while the database restarts would otherwise leave its batch queued
    until the reaper's unclaimed rule (SMS_VISIBILITY_TIMEOUT) sends it again."""
    deadline = time.monotonic() + CLAIM_OUTAGE_GRACE
    while True:
        try:
            with session_scope() as session:
                return claim_batch(session, batch_id, owner)
        except (OperationalError, InterfaceError):
            if time.monotonic() > deadline:
                raise
            logger.warning("batch %s: job database unreachable; claiming again", batch_id)
            time.sleep(1.0)


@shared_task(name=COPY_TASK_NAME)
def copy_batch(batch_id: int) -> str:
    """Claim batch ``batch_id``, copy its entries, store per-file results, complete it.

    Returns what happened: "done", "failed" (the whole batch could not be copied, e.g.
    the source refused the logon), "not claimed" or "lease lost".
    """
    owner = worker_identity()
    if not _claim(batch_id, owner):
        logger.info("batch %s: not claimed (done, missing, or leased to another)", batch_id)
        return "not claimed"
    try:
        with LeaseKeeper(batch_id, owner) as keeper:
            try:
                work = _load(batch_id)
                logger.info("batch %s: %s entries, attempt %s, claimed by %s",
                            batch_id, len(work.records), work.attempt, owner)
                if work.cancelled:
                    return _give_up(batch_id, owner, "RUN_CANCELLED", "the run was cancelled")
                if work.overdue:
                    return _give_up(batch_id, owner, MAX_DURATION_CODE,
                                    f"not started: the run's maximum duration of "
                                    f"{work.options.max_duration:g} s had passed; the next run copies it")
                if work.attempt > MAX_ATTEMPTS:
                    return _give_up(batch_id, owner, "BATCH_ABANDONED",
                                    f"gave up after {MAX_ATTEMPTS} attempts: each worker died "
                                    "or lost its lease")
                results = _copy_with_retries(work, keeper)
                keeper.check()
                owners = _owners(work, results)
            except LeaseLost:
                raise
            except Exception as exc:  # noqa: BLE001 - the whole batch failed: record why, go on
                logger.exception("batch %s failed as a whole", batch_id)
                keeper.check()
                return _give_up(batch_id, owner, *_describe(exc))
            keeper.check()
            rows = _updates(work, results, owners)
            done = [r for r in results if r.outcome != engine.Outcome.FAILED]
            copied_bytes = sum(r.size for r in done if r.outcome == engine.Outcome.COPIED)
            with session_scope() as session:
                if rows:
                    _store_results(session, rows)
                if not complete_batch(session, batch_id, owner, files_done=len(done),
                                      bytes_done=copied_bytes):
                    raise LeaseLost(f"batch {batch_id}: lease lost before completion")
    except LeaseLost as exc:
        logger.warning("%s; discarding this attempt's results", exc)
        return "lease lost"
    failed = len(results) - len(done)
    logger.info("batch %s: done, %s entries, %s failed", batch_id, len(results), failed)
    return "done"


__all__ = ["COPY_TASK_NAME", "LeaseKeeper", "copy_batch"]
