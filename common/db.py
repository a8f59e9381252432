"""Engines and sessions of the job database, the bulk-insert path, and after-commit hooks.

One engine per database URL and process (re-made after ``fork``, so a Celery prefork child
never shares its parent's connections). SQLite runs in WAL mode with a busy timeout and
foreign keys on, so several worker processes can share one file. File records are loaded
with PostgreSQL ``COPY`` (``psycopg2``'s ``copy_expert``) and with ``executemany`` on
SQLite, inside the caller's transaction.

After-commit hooks follow warehouse's tasks.py: work queued during a transaction (above
all: publishing a Celery task that names a row) runs only once the transaction has
committed, and is dropped if it rolls back. A worker must never receive a batch id the
database does not have yet.

This module must never log a URL with its password, and must never publish anything
before the transaction that wrote it has committed.
"""

from __future__ import annotations

import enum
import io
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from common.models import FileRecord
from common.settings import get_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _forget_engines_after_fork() -> None:
    """In a forked child, drop the parent's pools without closing its sockets."""
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()


os.register_at_fork(after_in_child=_forget_engines_after_fork)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """A new engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":  # a file: make its folder
            os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
        # No pooling: a pooled pysqlite connection can stay in an implicit read transaction
        # (a statement left unreset by a cursor not yet garbage-collected) and then sees,
        # in WAL mode, a snapshot older than other processes' commits. A connection per
        # session costs well under a millisecond and always reads the latest commit.
        in_memory = not parsed.database or parsed.database == ":memory:"
        engine = create_engine(
            parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            **({} if in_memory else {"poolclass": NullPool}),
        )
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    return create_engine(parsed, pool_pre_ping=True)


def get_engine(url: str | None = None) -> Engine:
    """The process's engine for ``url`` (default: settings.database_url), made once."""
    url = url or get_settings().database_url
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def dispose_engines() -> None:
    """Close every engine this process made (tests and shutdown)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    """A sessionmaker bound to the engine for ``url`` (default: settings.database_url)."""
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        # Not under the rollback above: once the transaction has committed, an error raised
        # by an after-commit callback must surface as itself, never as the "session is in
        # 'committed' state" error a rollback of a committed transaction raises. A failed
        # commit is rolled back by close().
        session.commit()
    finally:
        session.close()


# --- after-commit hooks -------------------------------------------------------------

_AFTER_COMMIT_KEY = "sms.after_commit"


def after_commit(session: Session, callback: Callable[[], object]) -> None:
    """Run ``callback`` once ``session``'s current transaction commits; never if it rolls back.

    The callback runs outside any transaction and must not use ``session``; give it plain
    values (ids, names) captured before the commit.
    """
    session.info.setdefault(_AFTER_COMMIT_KEY, []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for callback in session.info.pop(_AFTER_COMMIT_KEY, []):
        callback()


@event.listens_for(Session, "after_rollback")
def _drop_after_commit(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT_KEY, None)


# --- bulk insert of file records ------------------------------------------------------

FILE_RECORD_COLUMNS: tuple[str, ...] = tuple(
    column.name for column in FileRecord.__table__.columns if column.name != "id"
)
_COLUMN_DEFAULTS: dict[str, Any] = {
    "run_id": None,
    "batch_id": None,
    "is_dir": False,
    "size": 0,
    "creation_time": None,
    "last_write_time": None,
    "last_access_time": None,
    "change_time": None,
    "attributes": 0,
    "hash_algorithm": None,
    "source_hash": None,
    "destination_hash": None,
    "state": "scanned",
    "error_code": None,
    "error_message": None,
    "owner": None,
}
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_text(rows: Iterable[Sequence[Any]]) -> io.StringIO:
    """Rows (tuples of values in one column order) as PostgreSQL COPY text, ready to read.

    The common types are formatted inline (no call per value): this runs for every file
    record a scan or a transfer stores, and a call per field was most of the scan's own
    CPU time.
    """
    buffer = io.StringIO()
    buffer.writelines([
        "\t".join([
            "\\N" if value is None
            # str.replace and isprintable are far cheaper than translate; a name with a
            # tab, newline or other control character takes translate
            else (value.replace("\\", "\\\\") if value.isprintable() else value.translate(_COPY_ESCAPES))
            if value.__class__ is str
            else str(value) if value.__class__ is int
            else ("t" if value else "f") if value.__class__ is bool
            else str(value._value_) if isinstance(value, enum.Enum)  # stored by value
            else str(value).translate(_COPY_ESCAPES)
            for value in row]) + "\n"
        for row in rows])
    buffer.seek(0)
    return buffer


def _complete_row(row: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(row) - set(FILE_RECORD_COLUMNS)
    if unknown:
        raise ValueError(f"unknown file record columns: {sorted(unknown)}")
    full = {**_COLUMN_DEFAULTS, **row}
    missing = [name for name in FILE_RECORD_COLUMNS if name not in full]
    if missing:
        raise ValueError(f"file record lacks required columns: {missing}")
    return full


def insert_rows(session: Session, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
    """Insert rows of ``table`` given as tuples in ``columns`` order, in ``session``'s
    transaction; returns how many were written. Columns left out take their database
    default (NULL for most). PostgreSQL gets one ``COPY ... FROM STDIN``; other databases
    an ``executemany`` INSERT. Nothing is committed here; a constraint violation raises
    ``sqlalchemy.exc.IntegrityError`` on either. The fast path for the thousands of file
    records a scan stores and of references a re-run stores: no dict per row.
    """
    if not rows:
        return 0
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
        dbapi_error = connection.dialect.loaded_dbapi.Error
        cursor = connection.connection.driver_connection.cursor()
        try:
            cursor.copy_expert(statement, copy_text(rows))
        except dbapi_error as exc:  # the same exception types as an INSERT would raise
            raise DBAPIError.instance(statement, None, exc, dbapi_error, dialect=connection.dialect) from exc
        finally:
            cursor.close()
    else:
        connection.execute(table.insert(), [
            {name: (value.value if isinstance(value, enum.Enum) else value) for name, value in zip(columns, row)}
            for row in rows])
    return len(rows)


def bulk_insert_file_records(
    session: Session, rows: Iterable[Mapping[str, Any]], *, chunk_size: int = 50_000
) -> int:
    """Insert file records in ``session``'s transaction; returns how many were written.

    Each row maps column names of ``FileRecord`` (``share_id`` and ``relative_path`` are
    required; other columns default as in the model). Written by ``insert_rows`` in
    chunks of ``chunk_size``; on PostgreSQL, columns NULL in every row of a chunk are left
    out (fewer fields to format and to parse). Nothing is committed here.
    """
    total = 0
    chunk: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal total
        if not chunk:
            return
        columns = [name for name in FILE_RECORD_COLUMNS
                   if _COLUMN_DEFAULTS.get(name, 0) is not None or any(full[name] is not None for full in chunk)]
        total += insert_rows(session, FileRecord.__table__, columns,
                             [tuple(full[name] for name in columns) for full in chunk])
        chunk.clear()

    for row in rows:
        chunk.append(_complete_row(row))
        if len(chunk) >= chunk_size:
            flush()
    flush()
    return total
