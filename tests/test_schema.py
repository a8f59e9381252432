"""The job database schema on real SQLite and PostgreSQL: migrations, bulk load, indexes.

Alembic takes an empty database to head and back to base; before a command, SQLite is
brought to head and an older PostgreSQL refused; the models and the migrations
describe the same schema; 100,000 file records load through the bulk path (COPY on
PostgreSQL) byte- and tick-exact, and reconciliation queries are served by their indexes.
"""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from common.db import after_commit, bulk_insert_file_records, get_engine, session_scope
from common.models import (
    Base,
    FileRecord,
    FileState,
    Job,
    Pairing,
    Server,
    ServerKind,
    ServerRole,
    Share,
    TransferRun,
)
from orchestrator.database import (
    SchemaNotReady,
    alembic_config,
    downgrade_to_base,
    ensure_schema,
    upgrade_to_head,
)

FILE_COUNT = 100_000
# FILETIMEs whose last 100 ns digit is not 0: datetimes would lose it.
FILETIME = 133_500_000_000_000_007


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request, tmp_path):
    """An empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    return request.getfixturevalue("fresh_postgres_url")


def head_revision() -> str:
    """The newest Alembic revision of orchestrator/migrations."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def table_names(url: str) -> set[str]:
    return set(inspect(get_engine(url)).get_table_names())


def test_upgrade_to_head_then_downgrade_to_base(empty_database_url):
    assert table_names(empty_database_url) == set()
    upgrade_to_head(empty_database_url)
    assert table_names(empty_database_url) == set(Base.metadata.tables) | {"alembic_version"}
    with get_engine(empty_database_url).connect() as connection:
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert version == head_revision()
    downgrade_to_base(empty_database_url)
    assert table_names(empty_database_url) == {"alembic_version"}
    upgrade_to_head(empty_database_url)  # and up again: the downgrade left nothing behind
    assert table_names(empty_database_url) >= set(Base.metadata.tables)


def test_ensure_schema_upgrades_sqlite_and_refuses_an_old_postgresql(empty_database_url):
    """Before a command: the embedded SQLite database is created, or brought up from an
    older revision, and left alone at head; a PostgreSQL database that is not at head is
    refused with the command that upgrades it, and never changed."""
    def version() -> str | None:
        with get_engine(empty_database_url).connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    sqlite = empty_database_url.startswith("sqlite")
    if sqlite:
        ensure_schema(empty_database_url)  # a new database
        assert version() == head_revision()
    upgrade_to_head(empty_database_url)
    command.downgrade(alembic_config(empty_database_url), "-1")
    older = version()
    assert older not in (None, head_revision())
    if sqlite:
        ensure_schema(empty_database_url)
        assert version() == head_revision()
        ensure_schema(empty_database_url)  # at head: nothing to do
        assert version() == head_revision()
    else:
        with pytest.raises(SchemaNotReady, match=f"revision {older}.*sms db upgrade"):
            ensure_schema(empty_database_url)
        assert version() == older


def test_models_match_the_migrations(empty_database_url):
    upgrade_to_head(empty_database_url)
    with get_engine(empty_database_url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def make_share(session) -> tuple[int, int]:
    """A job with a source, a destination, a share and a transfer run; (share id, run id)."""
    job = Job(name="bulk")
    source = Server(job=job, name="fs1", role=ServerRole.SOURCE, kind=ServerKind.SAMBA,
                    address="127.0.0.1")
    destination = Server(job=job, name="fs2", role=ServerRole.DESTINATION,
                         kind=ServerKind.SMB_ONLY, address="127.0.0.2")
    share = Share(server=source, name="data", path="/srv/data")
    session.add_all([job, source, destination, share])
    session.flush()
    pairing = Pairing(job_id=job.id, source_server_id=source.id,
                      destination_server_id=destination.id, shares=["data"])
    session.add(pairing)
    session.flush()
    run = TransferRun(job_id=job.id, pairing_id=pairing.id)
    session.add(run)
    session.flush()
    return share.id, run.id


def scan_rows(share_id: int, run_id: int | None, count: int):
    for index in range(count):
        yield {
            "share_id": share_id,
            "run_id": run_id,
            "relative_path": f"dir-{index % 100:03d}/file-{index:07d}.bin",
            "size": index * 4096 + 1,
            "creation_time": FILETIME + index,
            "last_write_time": FILETIME + 2 * index,
            "last_access_time": FILETIME + 3 * index,
            "change_time": FILETIME + 4 * index,
            "attributes": 0x20,
            "state": FileState.FAILED if index % 1000 == 0 else FileState.COPIED,
        }


def query_plan(session, statement) -> str:
    """The database's plan for ``statement`` as one string."""
    bind = session.get_bind()
    compiled = statement.compile(bind, compile_kwargs={"literal_binds": True})
    if bind.dialect.name == "postgresql":
        session.execute(text("ANALYZE file_records"))
        rows = session.execute(text(f"EXPLAIN {compiled}")).scalars()
    else:
        rows = (row[-1] for row in session.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
    return "\n".join(rows)


def test_bulk_insert_and_reconciliation_queries_use_indexes(empty_database_url):
    upgrade_to_head(empty_database_url)
    awkward = ["tab\there", "new\nline", "back\\slash\\N", "cr\rname", "Å vs Å", "\\N"]
    with session_scope(empty_database_url) as session:
        share_id, run_id = make_share(session)
        written = bulk_insert_file_records(session, scan_rows(share_id, run_id, FILE_COUNT))
        written += bulk_insert_file_records(
            session,
            ({"share_id": share_id, "run_id": None, "relative_path": name, "is_dir": True}
             for name in awkward),
        )
    assert written == FILE_COUNT + len(awkward)

    with session_scope(empty_database_url) as session:
        count = session.scalar(select(func.count()).select_from(FileRecord).where(
            FileRecord.run_id == run_id))
        assert count == FILE_COUNT
        scanned = session.scalars(select(FileRecord.relative_path).where(
            FileRecord.run_id.is_(None)).order_by(FileRecord.id)).all()
        assert scanned == awkward
        record = session.scalars(select(FileRecord).where(
            FileRecord.share_id == share_id, FileRecord.run_id == run_id,
            FileRecord.relative_path == "dir-099/file-0012399.bin")).one()
        assert (record.size, record.creation_time, record.last_write_time,
                record.last_access_time, record.change_time, record.attributes,
                record.state, record.is_dir) == (
            12399 * 4096 + 1, FILETIME + 12399, FILETIME + 2 * 12399, FILETIME + 3 * 12399,
            FILETIME + 4 * 12399, 0x20, FileState.COPIED, False)

        failed = select(FileRecord.relative_path).where(
            FileRecord.run_id == run_id, FileRecord.state == FileState.FAILED)
        assert len(session.scalars(failed).all()) == FILE_COUNT // 1000
        assert "ix_file_records_run_id_state" in query_plan(session, failed)

        by_path = select(FileRecord.id).where(
            FileRecord.share_id == share_id, FileRecord.run_id == run_id,
            FileRecord.relative_path == "dir-001/file-0000001.bin")
        assert "uq_file_records_share_id_run_id_relative_path" in query_plan(session, by_path)


def test_a_path_is_unique_per_share_within_a_run(empty_database_url):
    upgrade_to_head(empty_database_url)
    with session_scope(empty_database_url) as session:
        share_id, run_id = make_share(session)
        bulk_insert_file_records(session, scan_rows(share_id, run_id, 3))
        bulk_insert_file_records(session, scan_rows(share_id, None, 3))  # the scan: allowed
    with pytest.raises(IntegrityError, match="(?i)unique|duplicate"):
        with session_scope(empty_database_url) as session:
            bulk_insert_file_records(session, scan_rows(share_id, run_id, 1))


def test_after_commit_publishes_only_after_commit_and_never_on_rollback(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    upgrade_to_head(url)
    seen: list[tuple[str, bool]] = []

    def job_is_visible(name: str) -> bool:
        with get_engine(url).connect() as connection:
            return connection.execute(
                text("SELECT count(*) FROM jobs WHERE name = :n"), {"n": name}).scalar() == 1

    with session_scope(url) as session:
        session.add(Job(name="committed"))
        session.flush()
        after_commit(session, lambda: seen.append(("committed", job_is_visible("committed"))))
        assert seen == []
    assert seen == [("committed", True)]

    with pytest.raises(RuntimeError):
        with session_scope(url) as session:
            session.add(Job(name="rolled back"))
            session.flush()
            after_commit(session, lambda: seen.append(("rolled back", True)))
            raise RuntimeError("abort the transaction")
    assert seen == [("committed", True)]
    assert not job_is_visible("rolled back")

    # A callback that fails (the broker is down) surfaces as its own error, never as the
    # "session is in 'committed' state" error of rolling back a committed transaction;
    # what was committed stays committed.
    class BrokerDown(Exception):
        pass

    def fail() -> None:
        raise BrokerDown("redis is restarting")

    with pytest.raises(BrokerDown):
        with session_scope(url) as session:
            session.add(Job(name="committed, publish failed"))
            session.flush()
            after_commit(session, fail)
    assert job_is_visible("committed, publish failed")


def test_sqlite_runs_in_wal_with_a_busy_timeout_and_enforced_foreign_keys(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    upgrade_to_head(url)
    with get_engine(url).connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    with pytest.raises(IntegrityError, match="FOREIGN KEY"):
        with session_scope(url) as session:
            bulk_insert_file_records(session, [{"share_id": 424242, "relative_path": "orphan"}])


def test_sqlite_reader_sees_other_connections_commits_after_a_result_left_open(tmp_path):
    """A long-lived process (the API, a test) must never read an old WAL snapshot: a result
    left unconsumed in one session must not pin what the next session reads."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    upgrade_to_head(url)
    with session_scope(url) as session:
        session.add_all([Job(name=f"job {i}") for i in range(3)])
    with session_scope(url) as session:
        left_open = session.connection().exec_driver_sql("SELECT name FROM jobs")
        left_open.fetchone()  # the driver's cursor stays open until garbage-collected
    other = sqlite3.connect(tmp_path / "jobs.sqlite")
    other.execute("INSERT INTO jobs (name, description, state, created_at, updated_at) "
                  "SELECT 'added elsewhere', description, state, created_at, updated_at FROM jobs LIMIT 1")
    other.commit()
    other.close()
    with session_scope(url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 4
    del left_open
