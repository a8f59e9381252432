"""Dispatching batches to proxy workers, and the reaper that dispatches lost ones again.

A batch is dispatched by recording in its row what is sent (task name, keyword
arguments, queue) and when, then publishing the Celery message only after that
transaction commits (``common.db.after_commit``). The broker may lose a message (the
embedded SQLite broker has no visibility timeout; a SIGKILLed worker takes its prefetched
message with it) and a worker may die holding a lease: ``reap_expired_leases`` finds
running batches whose lease expired, and queued batches that nobody claimed within the
visibility timeout, puts them back to queued and publishes them again after commit. A
duplicate message is harmless: the claim in ``common.leases`` lets only one worker in.

This module must never put a credential or file data in a message: a message carries
only the batch id and the keyword arguments stored with the batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from common.db import after_commit, session_scope
from common.models import Batch, BatchState, utcnow
from common.settings import get_settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchDispatch:
    """What to publish for one batch: plain values, safe to use after the commit."""

    batch_id: int
    task_name: str
    queue: str
    kwargs: dict[str, Any] = field(default_factory=dict)


Publisher = Callable[[BatchDispatch], object]


def celery_publisher(app: Celery) -> Publisher:
    """A publisher that sends each dispatch as a Celery task to its destination's queue."""

    def publish(dispatch: BatchDispatch) -> None:
        app.send_task(
            dispatch.task_name,
            args=(dispatch.batch_id,),
            kwargs=dispatch.kwargs,
            queue=dispatch.queue,
        )

    return publish


def _publish_after_commit(
    session: Session, dispatches: list[BatchDispatch], publish: Publisher
) -> None:
    if not dispatches:
        return

    def publish_all() -> None:
        # The rows are committed: a broker that is down (Redis restarting) loses nothing,
        # the reaper publishes every unclaimed queued batch again after the visibility
        # timeout. So a failed publish is logged, never raised into the committing code.
        for dispatch in dispatches:
            try:
                publish(dispatch)
            except Exception as exc:  # noqa: BLE001 - any broker error; the reaper retries
                logger.warning("batch %s: publishing to %s failed (%s: %s); the reaper will "
                               "dispatch it again", dispatch.batch_id, dispatch.queue,
                               type(exc).__name__, exc)

    after_commit(session, publish_all)


def dispatch_batch(
    session: Session,
    batch: Batch,
    publish: Publisher,
    *,
    task_name: str,
    queue: str,
    kwargs: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> BatchDispatch:
    """Record that ``batch`` goes to ``queue`` as ``task_name`` and publish it after commit."""
    batch.state = BatchState.QUEUED
    batch.task_name = task_name
    batch.queue = queue
    batch.task_kwargs = dict(kwargs or {})
    batch.dispatched_at = now or utcnow()
    session.flush()
    dispatch = BatchDispatch(batch.id, task_name, queue, dict(batch.task_kwargs))
    _publish_after_commit(session, [dispatch], publish)
    return dispatch


def reap_expired_leases(
    session: Session,
    publish: Publisher,
    *,
    now: datetime | None = None,
    unclaimed_after: timedelta | None = None,
) -> list[int]:
    """Queue again every batch whose lease expired or whose message was never claimed.

    Running batches with ``lease_expires_at`` in the past, and queued batches dispatched
    longer than ``unclaimed_after`` ago (default: settings.visibility_timeout), return to
    queued with a new ``dispatched_at``; each is published again once ``session`` commits.
    Returns the ids of the batches dispatched again. The caller commits.
    """
    now = now or utcnow()
    unclaimed_after = unclaimed_after or timedelta(seconds=get_settings().visibility_timeout)
    stale_dispatch = now - unclaimed_after
    lost = or_(
        and_(Batch.state == BatchState.RUNNING, Batch.lease_expires_at < now),
        and_(Batch.state == BatchState.QUEUED, Batch.dispatched_at < stale_dispatch),
    )
    candidates = session.execute(
        select(Batch.id, Batch.task_name, Batch.queue, Batch.task_kwargs)
        .where(lost, Batch.task_name != "")
        .order_by(Batch.id)
    ).all()
    dispatches: list[BatchDispatch] = []
    for batch_id, task_name, queue, kwargs in candidates:
        # Conditional again: a worker may have renewed or finished it since the select.
        result = session.execute(
            update(Batch)
            .where(Batch.id == batch_id, lost)
            .values(
                state=BatchState.QUEUED,
                lease_owner=None,
                lease_expires_at=None,
                dispatched_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            dispatches.append(BatchDispatch(batch_id, task_name, queue, dict(kwargs or {})))
    _publish_after_commit(session, dispatches, publish)
    return [dispatch.batch_id for dispatch in dispatches]


def run_reaper(
    app: Celery,
    stop: threading.Event,
    *,
    url: str | None = None,
    interval: float | None = None,
) -> None:
    """Reap expired leases every ``interval`` seconds until ``stop`` is set.

    ``interval`` defaults to a third of settings.batch_lease_seconds. A round that fails
    (the database or the broker restarting) is logged and retried on the next round: the
    reaper outlives the outages it exists for.
    """
    interval = interval or max(1.0, get_settings().batch_lease_seconds / 3)
    publish = celery_publisher(app)
    while not stop.is_set():
        try:
            with session_scope(url) as session:
                reaped = reap_expired_leases(session, publish)
            if reaped:
                logger.info("dispatched batches %s again after their lease expired", reaped)
        except Exception:
            logger.exception("lease reaper round failed; retrying in %.1f s", interval)
        stop.wait(interval)
