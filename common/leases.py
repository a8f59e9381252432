"""The batch lease protocol, as proxy workers use it: claim, renew, complete.

The database, not the broker, decides who works on a batch. A worker that receives a
batch id first *claims* it with one atomic conditional UPDATE: a queued batch, or a running
batch whose lease has expired, becomes running with ``attempt + 1``, the worker as
``lease_owner`` and a fresh ``lease_expires_at``. Only one claimant can win. While working,
the worker *renews* its lease; at the end it *completes* the batch, again conditionally on
still owning it, so a worker that lost its lease (it stalled, another worker took over)
cannot overwrite the newer attempt's result. The orchestrator's reaper
(``orchestrator.leases``) puts batches whose lease expired back in the queue.

Each function runs in the caller's session and transaction and does not commit: commit
right after a claim or renewal so other processes see it. Times are UTC from this
process's clock, so the orchestrator and proxy workers need synchronised clocks (NTP).

This module must never read or write anything but the ``batches`` row it is given, and
must never import the orchestrator.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, or_, update
from sqlalchemy.orm import Session

from common.models import Batch, BatchState, utcnow
from common.settings import get_settings


def lease_duration() -> timedelta:
    """How long a claim or renewal holds a batch (settings.batch_lease_seconds)."""
    return timedelta(seconds=get_settings().batch_lease_seconds)


def claim_batch(
    session: Session, batch_id: int, owner: str, *, now: datetime | None = None
) -> bool:
    """Atomically take the lease of a queued (or lease-expired running) batch for ``owner``.

    Returns True when this call won the batch; False when the batch does not exist, is
    done or failed, or is running under someone else's live lease.
    """
    now = now or utcnow()
    result = session.execute(
        update(Batch)
        .where(
            Batch.id == batch_id,
            or_(
                Batch.state == BatchState.QUEUED,
                and_(Batch.state == BatchState.RUNNING, Batch.lease_expires_at < now),
            ),
        )
        .values(
            state=BatchState.RUNNING,
            attempt=Batch.attempt + 1,
            lease_owner=owner,
            lease_expires_at=now + lease_duration(),
            error="",
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def renew_lease(
    session: Session, batch_id: int, owner: str, *, now: datetime | None = None
) -> bool:
    """Extend ``owner``'s lease on a running batch; False if the lease is no longer theirs."""
    now = now or utcnow()
    result = session.execute(
        update(Batch)
        .where(
            Batch.id == batch_id,
            Batch.state == BatchState.RUNNING,
            Batch.lease_owner == owner,
        )
        .values(lease_expires_at=now + lease_duration())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def complete_batch(
    session: Session,
    batch_id: int,
    owner: str,
    *,
    files_done: int,
    bytes_done: int,
    failed: bool = False,
    error: str = "",
    now: datetime | None = None,
) -> bool:
    """Mark ``owner``'s running batch done (or failed, with ``error``) and release the lease.

    Returns False, changing nothing, when ``owner`` no longer holds the batch: the caller
    must then roll back whatever it wrote for this batch in the same transaction.
    """
    now = now or utcnow()
    result = session.execute(
        update(Batch)
        .where(
            Batch.id == batch_id,
            Batch.state == BatchState.RUNNING,
            Batch.lease_owner == owner,
        )
        .values(
            state=BatchState.FAILED if failed else BatchState.DONE,
            files_done=files_done,
            bytes_done=bytes_done,
            error=error,
            lease_expires_at=None,
            finished_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1
