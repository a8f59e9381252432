"""Batches cross a real broker to real worker processes, and a killed worker loses nothing.

The lease protocol is checked against real SQLite and PostgreSQL; the probe task crosses a
real Redis to an ``sms-worker`` subprocess and lands in PostgreSQL, and the same on the
embedded SQLite broker and database; a worker SIGKILLed while it holds a batch has its
batch re-dispatched by the reaper once the lease expires, and a second worker finishes it
with every file record written exactly once.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest
from celery import Celery
from sqlalchemy import func, select

from common.celery_app import EMBEDDED_BROKER_POLL, EmbeddedBrokerTransport, create_celery_app
from common.db import session_scope
from common.leases import claim_batch, complete_batch, renew_lease
from common.models import (
    Batch,
    BatchState,
    FileRecord,
    Job,
    Pairing,
    Server,
    ServerKind,
    ServerRole,
    Share,
    TransferRun,
    utcnow,
)
from common.settings import Settings, reset_settings_cache
from orchestrator.database import upgrade_to_head
from orchestrator.leases import (
    BatchDispatch,
    celery_publisher,
    dispatch_batch,
    reap_expired_leases,
    run_reaper,
)

pytestmark = pytest.mark.filterwarnings(
    # kombu's SQLAlchemy transport (the embedded broker) uses a loader SQLAlchemy 2.1 deprecates.
    "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"
)

PROBE_TASK = "proxy_worker.tasks.probe_batch"
LEASE_SECONDS = 5


@pytest.fixture(autouse=True)
def short_leases(monkeypatch):
    """Leases of LEASE_SECONDS in this process too (workers get it through their env)."""
    monkeypatch.setenv("SMS_BATCH_LEASE_SECONDS", str(LEASE_SECONDS))
    reset_settings_cache()
    yield
    reset_settings_cache()


def make_batches(url: str, count: int, file_count: int) -> list[int]:
    """A job, a pairing, a transfer run and ``count`` batches of ``file_count`` files each."""
    with session_scope(url) as session:
        job = Job(name=f"job-{uuid.uuid4().hex[:8]}")
        source = Server(job=job, name="fs1", role=ServerRole.SOURCE, kind=ServerKind.SAMBA,
                        address="127.0.0.1")
        destination = Server(job=job, name="fs2", role=ServerRole.DESTINATION,
                             kind=ServerKind.SAMBA, address="127.0.0.2")
        share = Share(server=source, name="data")
        session.add_all([job, source, destination, share])
        session.flush()
        pairing = Pairing(job_id=job.id, source_server_id=source.id,
                          destination_server_id=destination.id)
        session.add(pairing)
        session.flush()
        run = TransferRun(job_id=job.id, pairing_id=pairing.id)
        session.add(run)
        session.flush()
        batches = [Batch(run_id=run.id, share_id=share.id, file_count=file_count)
                   for _ in range(count)]
        session.add_all(batches)
        session.flush()
        return [batch.id for batch in batches]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A job database at head, on each kind of database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    upgrade_to_head(url)
    return url


# --- the lease protocol against a real database --------------------------------------

def test_claim_is_exclusive_and_a_lost_lease_cannot_complete(database_url):
    [batch_id] = make_batches(database_url, 1, 0)
    with session_scope(database_url) as session:
        assert claim_batch(session, batch_id, "worker-a")
    with session_scope(database_url) as session:
        assert not claim_batch(session, batch_id, "worker-b"), "a live lease was taken"
        assert not renew_lease(session, batch_id, "worker-b")
        assert not complete_batch(session, batch_id, "worker-b", files_done=0, bytes_done=0)
        assert renew_lease(session, batch_id, "worker-a")

    after_expiry = utcnow() + timedelta(seconds=LEASE_SECONDS + 1)
    with session_scope(database_url) as session:
        assert claim_batch(session, batch_id, "worker-b", now=after_expiry)
    with session_scope(database_url) as session:
        assert not complete_batch(session, batch_id, "worker-a", files_done=1, bytes_done=1)
        assert complete_batch(session, batch_id, "worker-b", files_done=7, bytes_done=9)
    with session_scope(database_url) as session:
        batch = session.get(Batch, batch_id)
        assert (batch.state, batch.attempt, batch.lease_owner, batch.files_done,
                batch.bytes_done, batch.lease_expires_at) == (
            BatchState.DONE, 2, "worker-b", 7, 9, None)
        far_future = utcnow() + timedelta(days=1)
        assert not claim_batch(session, batch_id, "worker-c", now=far_future)


def test_reaper_requeues_lost_batches_and_publishes_after_commit(database_url):
    expired, unclaimed, live, fresh = make_batches(database_url, 4, 0)
    published: list[BatchDispatch] = []
    start = utcnow()
    with session_scope(database_url) as session:
        for batch_id in (expired, unclaimed, live, fresh):
            dispatch_batch(session, session.get(Batch, batch_id), published.append,
                           task_name=PROBE_TASK, queue="sms.dest.fs2",
                           kwargs={"stall_on_first_attempt": 0}, now=start)
        assert published == [], "published before the commit"
    assert [d.batch_id for d in published] == [expired, unclaimed, live, fresh]
    with session_scope(database_url) as session:
        assert claim_batch(session, expired, "dead-worker", now=start)
        assert claim_batch(session, live, "live-worker", now=start + timedelta(seconds=4))
        session.get(Batch, fresh).dispatched_at = start + timedelta(seconds=500)

    published.clear()
    later = start + timedelta(seconds=LEASE_SECONDS + 1)
    with session_scope(database_url) as session:
        reaped = reap_expired_leases(session, published.append, now=later,
                                     unclaimed_after=timedelta(seconds=60))
        assert reaped == [expired]
        assert published == []
    assert published == [BatchDispatch(expired, PROBE_TASK, "sms.dest.fs2",
                                       {"stall_on_first_attempt": 0})]

    published.clear()
    much_later = start + timedelta(seconds=61)
    with session_scope(database_url) as session:
        reaped = reap_expired_leases(session, published.append, now=much_later,
                                     unclaimed_after=timedelta(seconds=60))
    # unclaimed: dispatched 61 s ago; live: its lease ran out at start+4+5 s;
    # expired: re-dispatched at start+6 s, not yet stale; fresh: dispatched at start+500 s.
    assert sorted(reaped) == sorted([unclaimed, live])
    assert sorted(d.batch_id for d in published) == sorted([unclaimed, live])
    with session_scope(database_url) as session:
        states = {b.id: (b.state, b.lease_owner) for b in session.scalars(select(Batch))}
    assert states[live] == (BatchState.QUEUED, None)
    assert states[expired] == (BatchState.QUEUED, None)

    published.clear()
    with pytest.raises(RuntimeError):
        with session_scope(database_url) as session:
            reap_expired_leases(session, published.append, now=much_later + timedelta(days=1),
                                unclaimed_after=timedelta(seconds=60))
            raise RuntimeError("roll back the reaper's transaction")
    assert published == [], "a rolled-back reap must publish nothing"


# --- real brokers and real worker processes -------------------------------------------

@dataclass
class Pipeline:
    """A database, a broker, the worker environment and a Celery app to publish with."""

    database_url: str
    destination: str
    queue: str
    worker_env: dict[str, str]
    app: Celery

    def dispatch(self, batch_ids: list[int], **kwargs) -> None:
        """Dispatch batches as probes to the destination's queue (published after commit)."""
        publish = celery_publisher(self.app)
        with session_scope(self.database_url) as session:
            for batch_id in batch_ids:
                dispatch_batch(session, session.get(Batch, batch_id), publish,
                               task_name=PROBE_TASK, queue=self.queue, kwargs=kwargs)

    def batch(self, batch_id: int) -> Batch:
        with session_scope(self.database_url) as session:
            return session.get(Batch, batch_id)

    def wait_for(self, batch_id: int, predicate, timeout: float) -> Batch:
        """Poll the batch until ``predicate`` holds for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = self.batch(batch_id)
            if predicate(batch):
                return batch
            time.sleep(0.5)
        raise AssertionError(f"batch {batch_id} never got there: {self.batch(batch_id).__dict__}")

    def file_records(self, batch_id: int) -> list[str]:
        with session_scope(self.database_url) as session:
            return list(session.scalars(select(FileRecord.relative_path).where(
                FileRecord.batch_id == batch_id).order_by(FileRecord.relative_path)))


def make_pipeline(tmp_path, database_url: str, broker_url: str) -> Pipeline:
    destination = f"dst{uuid.uuid4().hex[:8]}"
    env = {
        "SMS_STATE_DIR": str(tmp_path / "worker-state"),
        "SMS_DATABASE_URL": database_url,
        "SMS_BROKER_URL": broker_url,
        "SMS_BATCH_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    settings = Settings(state_dir=tmp_path / "orchestrator-state", database_url=database_url,
                        broker_url=broker_url, batch_lease_seconds=LEASE_SECONDS)
    upgrade_to_head(database_url)
    return Pipeline(database_url, destination, settings.destination_queue(destination), env,
                    create_celery_app(settings))


@pytest.fixture
def redis_postgres_pipeline(tmp_path, redis_url, fresh_postgres_url):
    pipeline = make_pipeline(tmp_path, fresh_postgres_url, redis_url)
    yield pipeline
    pipeline.app.close()


@pytest.fixture
def embedded_pipeline(tmp_path):
    pipeline = make_pipeline(tmp_path, f"sqlite:///{tmp_path / 'jobs.sqlite'}",
                             f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}")
    yield pipeline
    pipeline.app.close()


@pytest.fixture(params=["redis+postgresql", "embedded"])
def pipeline(request):
    name = "redis_postgres_pipeline" if request.param == "redis+postgresql" else "embedded_pipeline"
    return request.getfixturevalue(name)


def owner_pid(batch: Batch) -> int:
    return int(batch.lease_owner.rsplit(":", 1)[1])


def test_probe_batches_cross_the_broker_to_a_worker_and_land_in_the_database(
    pipeline, worker_factory
):
    worker = worker_factory(pipeline.destination, pipeline.worker_env, concurrency=2)
    batch_ids = make_batches(pipeline.database_url, 3, 250)
    pipeline.dispatch(batch_ids)
    for batch_id in batch_ids:
        batch = pipeline.wait_for(batch_id, lambda b: b.state == BatchState.DONE, timeout=60)
        assert (batch.attempt, batch.files_done, batch.bytes_done) == (1, 250, sum(range(250)))
        assert owner_pid(batch) in worker.pids(), "the lease owner is not this worker's process"
        paths = pipeline.file_records(batch_id)
        assert paths == [f"probe/batch-{batch_id}/file-{i:06d}" for i in range(250)]


def test_a_worker_killed_holding_a_batch_loses_nothing(pipeline, worker_factory):
    first = worker_factory(pipeline.destination, pipeline.worker_env)
    [batch_id] = make_batches(pipeline.database_url, 1, 500)
    pipeline.dispatch([batch_id], stall_on_first_attempt=120)
    held = pipeline.wait_for(batch_id, lambda b: b.state == BatchState.RUNNING, timeout=60)
    assert held.attempt == 1 and owner_pid(held) in first.pids()
    first.kill()
    assert first.pids() == set()

    second = worker_factory(pipeline.destination, pipeline.worker_env)
    # Without the reaper nothing brings the batch back, even after its lease ran out: the
    # broker does not redeliver the dead worker's message (no or a long visibility timeout).
    time.sleep(max(0.0, (held.lease_expires_at - utcnow()).total_seconds()) + 2)
    stuck = pipeline.batch(batch_id)
    assert (stuck.state, stuck.attempt) == (BatchState.RUNNING, 1)
    stop_reaper = threading.Event()
    reaper = threading.Thread(
        target=run_reaper, args=(pipeline.app, stop_reaper),
        kwargs={"url": pipeline.database_url, "interval": 0.5},
    )
    reaper.start()
    try:
        done = pipeline.wait_for(batch_id, lambda b: b.state == BatchState.DONE,
                                 timeout=LEASE_SECONDS + 60)
    finally:
        stop_reaper.set()
        reaper.join()
    assert done.attempt == 2
    assert owner_pid(done) in second.pids()
    assert done.files_done == 500
    paths = pipeline.file_records(batch_id)
    assert paths == [f"probe/batch-{batch_id}/file-{i:06d}" for i in range(500)]
    with session_scope(pipeline.database_url) as session:
        assert session.scalar(select(func.count()).select_from(FileRecord)) == 500


def test_workers_refuse_anything_but_json(redis_postgres_pipeline, worker_factory):
    pipeline = redis_postgres_pipeline
    worker = worker_factory(pipeline.destination, pipeline.worker_env)
    pickled, plain = make_batches(pipeline.database_url, 2, 3)
    pipeline.app.send_task(PROBE_TASK, args=(pickled,), queue=pipeline.queue,
                           serializer="pickle")
    pipeline.app.send_task(PROBE_TASK, args=(plain,), queue=pipeline.queue)
    pipeline.wait_for(plain, lambda b: b.state == BatchState.DONE, timeout=60)
    refused = pipeline.batch(pickled)
    assert (refused.state, refused.attempt) == (BatchState.QUEUED, 0)
    assert pipeline.file_records(pickled) == []
    assert "pickle" in worker.log() and "untrusted content" in worker.log()


def test_the_embedded_broker_is_polled_often(embedded_pipeline):
    """The embedded broker's consumers look at their queues every EMBEDDED_BROKER_POLL
    seconds, not kombu's every second (a message waited up to a second before a worker
    took it); the URL left once the transport is named by its class reaches the broker's
    database."""
    with embedded_pipeline.app.connection_for_write() as connection:
        assert type(connection.transport) is EmbeddedBrokerTransport
        assert connection.transport.polling_interval == EMBEDDED_BROKER_POLL < 1
        connection.default_channel.queue_declare("sms.poll-check")
    broker = sqlite3.connect(embedded_pipeline.worker_env["SMS_BROKER_URL"].removeprefix("sqla+sqlite:///"))
    try:
        assert ("sms.poll-check",) in broker.execute("SELECT name FROM kombu_queue").fetchall()
    finally:
        broker.close()
