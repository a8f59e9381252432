"""Tasks a proxy worker runs. For now one: a probe that proves the batch pipeline end to end.

``probe_batch`` does what a real copy task will do around the copying: it claims the
batch's lease in the job database, holds it (renewing it) while it works, bulk-writes one
file record per *simulated* path (``probe/batch-N/file-NNNNNN``; nothing is read from or
written to any file server), and completes the batch, recording this worker's host and
pid as the lease owner. It is how tests and operators check that broker, workers,
database and the lease reaper work together.

Tasks here receive only a batch id and plain options; they must never receive a
credential through the broker, and must never import the orchestrator.
"""

from __future__ import annotations

import os
import socket
import time

from celery import shared_task
from celery.utils.log import get_task_logger

from common.db import bulk_insert_file_records, session_scope
from common.leases import claim_batch, complete_batch, lease_duration, renew_lease
from common.models import Batch, FileState

logger = get_task_logger(__name__)

# 2026-01-01T00:00:00Z as FILETIME (100 ns ticks since 1601-01-01).
PROBE_FILETIME = 134_116_128_000_000_000


class LeaseLost(Exception):
    """This worker no longer holds the batch's lease; its work on the batch is discarded."""


def worker_identity() -> str:
    """``host:pid`` of this worker process, recorded as the lease owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


def hold_lease(batch_id: int, owner: str, seconds: float) -> None:
    """Keep the lease on ``batch_id`` for ``seconds``, renewing it a few times per lease."""
    deadline = time.monotonic() + seconds
    step = max(lease_duration().total_seconds() / 3, 0.5)
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(step, remaining))
        with session_scope() as session:
            if not renew_lease(session, batch_id, owner):
                raise LeaseLost(f"batch {batch_id}: lease lost while holding it")


@shared_task(name="proxy_worker.tasks.probe_batch")
def probe_batch(batch_id: int, stall_on_first_attempt: float = 0.0) -> str:
    """Claim batch ``batch_id``, write a file record per simulated path, complete it.

    ``stall_on_first_attempt`` makes the first attempt hold the lease that many seconds
    before writing anything (so a test can kill the worker mid-batch); later attempts do
    not stall. Returns what happened: "done", "not claimed" or "lease lost".
    """
    owner = worker_identity()
    with session_scope() as session:
        if not claim_batch(session, batch_id, owner):
            logger.info("batch %s: not claimed (done, missing, or leased to another)", batch_id)
            return "not claimed"
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        attempt, share_id, run_id, file_count = (
            batch.attempt, batch.share_id, batch.run_id, batch.file_count
        )
    logger.info("batch %s: claimed by %s, attempt %s", batch_id, owner, attempt)
    try:
        if stall_on_first_attempt > 0 and attempt == 1:
            hold_lease(batch_id, owner, stall_on_first_attempt)
        with session_scope() as session:
            rows = (
                {
                    "share_id": share_id,
                    "run_id": run_id,
                    "batch_id": batch_id,
                    "relative_path": f"probe/batch-{batch_id}/file-{index:06d}",
                    "size": index,
                    "creation_time": PROBE_FILETIME + index,
                    "last_write_time": PROBE_FILETIME + index,
                    "last_access_time": PROBE_FILETIME + index,
                    "change_time": PROBE_FILETIME + index,
                    "attributes": 0x20,
                    "state": FileState.COPIED,
                }
                for index in range(file_count)
            )
            written = bulk_insert_file_records(session, rows)
            if not complete_batch(
                session, batch_id, owner, files_done=written, bytes_done=sum(range(file_count))
            ):
                raise LeaseLost(f"batch {batch_id}: lease lost before completion")
    except LeaseLost as exc:
        logger.warning("%s; discarding this attempt's work", exc)
        return "lease lost"
    logger.info("batch %s: done, %s file records", batch_id, written)
    return "done"
