"""The proxy worker's transfer task: copy one batch of a transfer run with the data plane.

``copy_batch(batch_id)`` claims the batch's lease in the job database (common.leases),
keeps renewing it from a heartbeat thread while it copies, reads everything else from
the database - the run's options, the source and destination servers, their encrypted
credentials (decrypted here with this worker's own key), the batch's file records - and
hands the entries to the copy engine (common.smb.copy). Failed entries are tried again
``retries`` times, ``retry_delay`` seconds apart. A file whose source changed while a
multi-request copy was reading it is recorded failed with that reason. Per-file results
(state copied / verified / skipped / mismatch / failed, hashes, NTSTATUS name and message)
are written in bulk in the same transaction that completes the batch, so a worker that
lost its lease changes nothing. A batch delivered twice is copied once: the second claim
fails. A locked file never blocks the batch: it is recorded failed and the next run
picks it up. A batch that cannot be copied at all (the source refuses the logon ...) has
every file recorded failed with the reason, and a batch claimed more than
``MAX_ATTEMPTS`` times (its workers keep dying) is given up the same way, so a run
always ends.

Tasks here receive only a batch id through the broker; they must never receive a
credential in a message, never log one, and never import the orchestrator.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from celery import shared_task
from celery.utils.log import get_task_logger
from sqlalchemy import func, select, update

from common.crypto import InvalidToken
from common.db import session_scope
from common.endpoints import server_endpoint
from common.leases import claim_batch, complete_batch, lease_duration, renew_lease
from common.models import Batch, FileRecord, FileState, Pairing, RunState, Server, Share, TransferRun
from common.smb import copy as engine
from common.smb import metadata as md
from common.smb.connection import SmbEndpoint, get_tree
from common.transfer_options import TransferOptions
from proxy_worker.tasks import LeaseLost, worker_identity

logger = get_task_logger(__name__)

COPY_TASK_NAME = "proxy_worker.copy_tasks.copy_batch"
HASH_LOOKUP_CHUNK = 500
SOURCE_CHANGED = "SOURCE_CHANGED"
# A batch claimed more often than this (each worker died or lost the lease) is failed.
MAX_ATTEMPTS = 5


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


def _previous_hashes(session, run: TransferRun, share_id: int, paths: list[str]) -> dict[str, str]:
    """Source hashes the pairing's previous run recorded for ``paths`` of this share."""
    previous = session.scalar(select(func.max(TransferRun.id)).where(
        TransferRun.pairing_id == run.pairing_id, TransferRun.id < run.id))
    if previous is None:
        return {}
    found: dict[str, str] = {}
    for start in range(0, len(paths), HASH_LOOKUP_CHUNK):
        chunk = paths[start:start + HASH_LOOKUP_CHUNK]
        found.update(session.execute(select(FileRecord.relative_path, FileRecord.source_hash).where(
            FileRecord.run_id == previous, FileRecord.share_id == share_id,
            FileRecord.relative_path.in_(chunk), FileRecord.source_hash.is_not(None),
            FileRecord.state.in_((FileState.COPIED, FileState.VERIFIED, FileState.SKIPPED)))).all())
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
        return _Work(run.id, run.state == RunState.CANCELLED, share.id, batch.attempt, options,
                     source, destination, records, hashes)


def _copy(work: _Work, indexes: list[int]) -> list[engine.FileResult]:
    entries = [engine.FileEntry(work.records[i][1], work.records[i][2],
                                work.recorded_hashes.get(work.records[i][1])) for i in indexes]
    return engine.copy_batch(work.source, work.destination, entries, work.options.copy_options())


def _sleep(seconds: float, keeper: LeaseKeeper) -> None:
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        keeper.check()
        time.sleep(min(remaining, 1.0))


def _source_changed(work: _Work, result: engine.FileResult, copy_options: engine.CopyOptions) -> bool:
    """For a file read in several requests: did its size or last-write time move meanwhile?"""
    if result.outcome != engine.Outcome.COPIED or result.is_directory \
            or result.size <= copy_options.compound_limit:
        return False
    after = md.stat(get_tree(work.source), result.path)
    return (after.end_of_file != result.size
            or after.basic.last_write_time != result.last_write_time)


def _copy_with_retries(work: _Work, keeper: LeaseKeeper) -> list[engine.FileResult]:
    copy_options = work.options.copy_options()
    results: list[engine.FileResult | None] = [None] * len(work.records)
    todo = list(range(len(work.records)))
    for round_number in range(work.options.retries + 1):
        if round_number:
            _sleep(work.options.retry_delay, keeper)
        keeper.check()
        for index, result in zip(todo, _copy(work, todo)):
            if _source_changed(work, result, copy_options):
                result.outcome = engine.Outcome.FAILED
                result.status_name = SOURCE_CHANGED
                result.message = f"the source changed while it was being copied: {result.path!r}"
            results[index] = result
        todo = [i for i in todo if results[i].outcome == engine.Outcome.FAILED]
        if not todo:
            break
        logger.info("batch files failed in round %s: %s", round_number + 1, len(todo))
    return results


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


def _updates(work: _Work, results: list[engine.FileResult]) -> list[dict]:
    rows = []
    for (record_id, _path, _is_dir), result in zip(work.records, results):
        row = {
            "id": record_id,
            "state": _state(result, work.options.verify),
            "hash_algorithm": result.hash_algorithm or None,
            "source_hash": result.source_hash,
            "destination_hash": result.destination_hash,
            "error_code": result.status_name,
            "error_message": result.message,
        }
        if result.outcome != engine.Outcome.FAILED:
            # What was actually copied (a file may have changed since the walk saw it).
            row.update(size=result.size, creation_time=result.creation_time,
                       last_write_time=result.last_write_time,
                       last_access_time=result.last_access_time, attributes=result.attributes)
        rows.append(row)
    return rows


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


@shared_task(name=COPY_TASK_NAME)
def copy_batch(batch_id: int) -> str:
    """Claim batch ``batch_id``, copy its entries, store per-file results, complete it.

    Returns what happened: "done", "failed" (the whole batch could not be copied, e.g.
    the source refused the logon), "not claimed" or "lease lost".
    """
    owner = worker_identity()
    with session_scope() as session:
        if not claim_batch(session, batch_id, owner):
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
                if work.attempt > MAX_ATTEMPTS:
                    return _give_up(batch_id, owner, "BATCH_ABANDONED",
                                    f"gave up after {MAX_ATTEMPTS} attempts: each worker died "
                                    "or lost its lease")
                results = _copy_with_retries(work, keeper)
            except LeaseLost:
                raise
            except Exception as exc:  # noqa: BLE001 - the whole batch failed: record why, go on
                logger.exception("batch %s failed as a whole", batch_id)
                keeper.check()
                return _give_up(batch_id, owner, *_describe(exc))
            keeper.check()
            rows = _updates(work, results)
            done = [r for r in results if r.outcome != engine.Outcome.FAILED]
            copied_bytes = sum(r.size for r in done if r.outcome == engine.Outcome.COPIED)
            with session_scope() as session:
                if rows:
                    session.execute(update(FileRecord), rows)
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
