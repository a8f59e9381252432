"""The job database's schema: SQLAlchemy 2 typed declarative models.

The database, not the broker, is the truth about a migration: which servers take part,
what the inventory found, which batches a transfer run is made of and who holds each
batch's lease, what every file looked like on the source and on the destination, how far
a cutover got, and an audit trail of events. Alembic's migrations in
``orchestrator/migrations`` must always match these models (tests/test_schema.py checks).

Designed for ten million file records per job: file records carry only scalar columns
(no JSON), times are raw 64-bit FILETIME integers (never datetimes, which lose the last
100 ns digit), and the indexes serve the reconciliation queries (by share and path, by
state, by batch). Bulk loads go through ``common.db.bulk_insert_file_records``.

This module must never hold a credential in clear text: ``Server.credential`` holds only
what ``common.crypto.encrypt_secret`` produced. It must never import Celery or a network
client: models are plain data.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    and_,
    exists,
    literal,
    null,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql import Subquery
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so migrations can drop what they created on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# A 64-bit primary key that still auto-increments on SQLite (only INTEGER PRIMARY KEY does).
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (the only kind stored in this schema)."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timestamp stored in UTC and always read back as an aware UTC datetime.

    PostgreSQL keeps the zone (timestamptz); SQLite keeps none, so naive values read from
    it are UTC by construction. Naive values are refused on the way in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: use an aware UTC datetime (common.models.utcnow)")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    """A portable string enum column type: VARCHAR holding the member values, no native type."""
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=False,
        length=32,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    """Declarative base of every model; its metadata is what Alembic compares against."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ServerRole(str, enum.Enum):
    """Which side of a migration a server is on."""

    SOURCE = "source"
    DESTINATION = "destination"


class ServerKind(str, enum.Enum):
    """How a server is managed: Windows over WinRM, Samba over SSH, or SMB alone."""

    WINDOWS = "windows"
    SAMBA = "samba"
    SMB_ONLY = "smb-only"


class JobState(str, enum.Enum):
    """Life cycle of a migration job."""

    DRAFT = "draft"
    INVENTORY = "inventory"
    TRANSFER = "transfer"
    CUTOVER = "cutover"
    DONE = "done"
    FAILED = "failed"


class PrincipalKind(str, enum.Enum):
    """A local account or a local group."""

    USER = "user"
    GROUP = "group"


class RunState(str, enum.Enum):
    """State of a transfer run, a cutover run or a cutover stage."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"


class BatchState(str, enum.Enum):
    """State of a batch of files under the lease protocol (see common.leases)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class FileState(str, enum.Enum):
    """Where one file or folder stands in inventory, transfer and validation."""

    SCANNED = "scanned"
    COPIED = "copied"
    SKIPPED = "skipped"
    VERIFIED = "verified"
    MISMATCH = "mismatch"
    FAILED = "failed"


# Record states that say the destination held the entry at the end of a transfer run.
ARRIVED_STATES = (FileState.COPIED, FileState.VERIFIED, FileState.SKIPPED)


class EventLevel(str, enum.Enum):
    """Severity of an audit event."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Job(Base):
    """A migration job: a set of source servers moving to destinations."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"), default=JobState.DRAFT)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )

    servers: Mapped[list[Server]] = relationship(back_populates="job")


class Server(Base):
    """A source or destination server of a job, and how to reach and manage it."""

    __tablename__ = "servers"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    role: Mapped[ServerRole] = mapped_column(_enum(ServerRole, "server_role"))
    kind: Mapped[ServerKind] = mapped_column(_enum(ServerKind, "server_kind"))
    address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer, default=445)
    username: Mapped[str] = mapped_column(String(255), default="")
    # Fernet token from common.crypto.encrypt_secret; never the clear-text password.
    credential: Mapped[bytes | None] = mapped_column(LargeBinary)
    # SSH (Samba) or WinRM (Windows) options: host, port, user, host key, transport...
    management: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    job: Mapped[Job] = relationship(back_populates="servers")
    shares: Mapped[list[Share]] = relationship(back_populates="server")

    def __repr__(self) -> str:
        return f"Server(id={self.id!r}, name={self.name!r}, role={self.role!r}, kind={self.kind!r})"


class ServerFacts(Base):
    """What an inventory learnt about a server's identity, network and volumes."""

    __tablename__ = "server_facts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    server_id: Mapped[int] = mapped_column(
        ForeignKey("servers.id", ondelete="CASCADE"), index=True
    )
    collected_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    hostname: Mapped[str] = mapped_column(String(255), default="")
    domain: Mapped[str] = mapped_column(String(255), default="")
    os_name: Mapped[str] = mapped_column(String(255), default="")
    os_version: Mapped[str] = mapped_column(String(255), default="")
    machine_sid: Mapped[str] = mapped_column(String(184), default="")
    # [{"name", "mac", "ipv4": [{"address", "prefix"}], "ipv6": [...], "gateway", "dns": [...]}]
    network_adapters: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # [{"name", "mount_point", "filesystem", "size", "free", "label"}]
    volumes: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Share(Base):
    """An SMB share found by inventory, with every property and its security descriptor."""

    __tablename__ = "shares"
    __table_args__ = (UniqueConstraint("server_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    server_id: Mapped[int] = mapped_column(
        ForeignKey("servers.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text, default="")
    remark: Mapped[str] = mapped_column(Text, default="")
    share_type: Mapped[int] = mapped_column(BigInteger, default=0)
    max_uses: Mapped[int | None] = mapped_column(BigInteger)
    caching_mode: Mapped[str | None] = mapped_column(String(32))
    access_based_enumeration: Mapped[bool | None] = mapped_column(Boolean)
    encrypt_data: Mapped[bool | None] = mapped_column(Boolean)
    continuously_available: Mapped[bool | None] = mapped_column(Boolean)
    # Every property as the server reported it (srvsvc level 502/1005, smb.conf, WMI...).
    properties: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The share's own security descriptor, self-relative bytes exactly as read.
    security_descriptor: Mapped[bytes | None] = mapped_column(LargeBinary)
    file_count: Mapped[int] = mapped_column(BigInteger, default=0)
    directory_count: Mapped[int] = mapped_column(BigInteger, default=0)
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    scanned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    server: Mapped[Server] = relationship(back_populates="shares")


class LocalPrincipal(Base):
    """A local user or group of a server, with its SID and (for groups) its members."""

    __tablename__ = "local_principals"
    __table_args__ = (UniqueConstraint("server_id", "kind", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    server_id: Mapped[int] = mapped_column(
        ForeignKey("servers.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[PrincipalKind] = mapped_column(_enum(PrincipalKind, "principal_kind"))
    name: Mapped[str] = mapped_column(String(255))
    sid: Mapped[str] = mapped_column(String(184), index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # For groups: [{"name", "sid"}] of each member.
    members: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class Pairing(Base):
    """A source server paired with its destination, with the path mapping and chosen shares."""

    __tablename__ = "pairings"
    __table_args__ = (UniqueConstraint("source_server_id", "destination_server_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    source_server_id: Mapped[int] = mapped_column(
        ForeignKey("servers.id", ondelete="CASCADE")
    )
    destination_server_id: Mapped[int] = mapped_column(
        ForeignKey("servers.id", ondelete="CASCADE"), index=True
    )
    # {"source path prefix": "destination path prefix"}, e.g. {"D:\\data": "E:\\data"}.
    path_mapping: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Names of the source shares chosen for migration.
    shares: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TransferRun(Base):
    """One pass of copying a pairing's chosen shares, with its options and counters."""

    __tablename__ = "transfer_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    pairing_id: Mapped[int] = mapped_column(
        ForeignKey("pairings.id", ondelete="CASCADE"), index=True
    )
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[RunState] = mapped_column(_enum(RunState, "run_state"), default=RunState.PENDING)
    files_total: Mapped[int] = mapped_column(BigInteger, default=0)
    files_copied: Mapped[int] = mapped_column(BigInteger, default=0)
    files_skipped: Mapped[int] = mapped_column(BigInteger, default=0)
    files_failed: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_copied: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Batch(Base):
    """A unit of transfer work leased to one proxy worker at a time.

    ``task_name``, ``task_kwargs`` and ``queue`` record exactly what was dispatched, so the
    lease reaper can dispatch it again without knowing what kind of task it is.
    """

    __tablename__ = "batches"
    __table_args__ = (
        Index("ix_batches_state_lease_expires_at", "state", "lease_expires_at"),
        Index("ix_batches_run_id_state", "run_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("transfer_runs.id", ondelete="CASCADE"))
    share_id: Mapped[int] = mapped_column(ForeignKey("shares.id", ondelete="CASCADE"), index=True)
    state: Mapped[BatchState] = mapped_column(
        _enum(BatchState, "batch_state"), default=BatchState.QUEUED
    )
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    queue: Mapped[str] = mapped_column(String(255), default="")
    task_name: Mapped[str] = mapped_column(String(255), default="")
    task_kwargs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    file_count: Mapped[int] = mapped_column(BigInteger, default=0)
    byte_count: Mapped[int] = mapped_column(BigInteger, default=0)
    files_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# The longest share-relative path (in UTF-8 bytes) a file record holds. PostgreSQL cannot
# index a btree entry over 2,704 bytes (a third of a page; measured: a 3,018-byte path of
# random names failed the scan's COPY); paths are unique per share and run through such
# an index, so a longer path is refused with PATH_TOO_LONG before it reaches the
# database, on every database alike. 2,600 leaves room for the share and run ids and the
# entry's header without relying on compression. In characters: 2,600 ASCII, about 860 CJK.
MAX_PATH_BYTES = 2600
PATH_TOO_LONG = "PATH_TOO_LONG"


def path_too_long(path: str) -> bool:
    """True when ``path`` is longer than a file record can hold (``MAX_PATH_BYTES``)."""
    # A code point takes at most 4 bytes of UTF-8: shorter paths need no encoding.
    return len(path) * 4 > MAX_PATH_BYTES and len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES


class FileRecord(Base):
    """One file or folder of a share: what the scan saw, and what the transfer did with it.

    Times are raw 64-bit FILETIME integers (100 ns ticks since 1601) exactly as read over
    SMB. Inventory scans write rows with ``run_id`` NULL; a transfer run writes its own
    rows. A path is unique per share within a scan and within a run.
    """

    __tablename__ = "file_records"
    __table_args__ = (
        Index(
            "uq_file_records_share_id_run_id_relative_path",
            "share_id",
            "run_id",
            "relative_path",
            unique=True,
            postgresql_where=text("run_id IS NOT NULL"),
            sqlite_where=text("run_id IS NOT NULL"),
        ),
        Index(
            "uq_file_records_share_id_relative_path_scan",
            "share_id",
            "relative_path",
            unique=True,
            postgresql_where=text("run_id IS NULL"),
            sqlite_where=text("run_id IS NULL"),
        ),
        # Scan records have neither run nor batch: the run and batch indexes leave them
        # out; the (share, state) index serves the scan's queries alone.
        Index("ix_file_records_run_id_state", "run_id", "state",
              postgresql_where=text("run_id IS NOT NULL"), sqlite_where=text("run_id IS NOT NULL")),
        Index("ix_file_records_share_id_state", "share_id", "state",
              postgresql_where=text("run_id IS NULL"), sqlite_where=text("run_id IS NULL")),
        Index("ix_file_records_batch_id", "batch_id",
              postgresql_where=text("batch_id IS NOT NULL"), sqlite_where=text("batch_id IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    share_id: Mapped[int] = mapped_column(ForeignKey("shares.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(
        ForeignKey("transfer_runs.id", ondelete="CASCADE")
    )
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id", ondelete="SET NULL"))
    relative_path: Mapped[str] = mapped_column(Text)
    is_dir: Mapped[bool] = mapped_column(Boolean, default=False)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    creation_time: Mapped[int | None] = mapped_column(BigInteger)
    last_write_time: Mapped[int | None] = mapped_column(BigInteger)
    last_access_time: Mapped[int | None] = mapped_column(BigInteger)
    change_time: Mapped[int | None] = mapped_column(BigInteger)
    attributes: Mapped[int] = mapped_column(BigInteger, default=0)
    hash_algorithm: Mapped[str | None] = mapped_column(String(32))
    source_hash: Mapped[str | None] = mapped_column(String(128))
    destination_hash: Mapped[str | None] = mapped_column(String(128))
    state: Mapped[FileState] = mapped_column(
        _enum(FileState, "file_state"), default=FileState.SCANNED
    )
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # The source entry's owner SID as read from its security descriptor (transfer runs).
    owner: Mapped[str | None] = mapped_column(String(184))


class UnchangedFile(Base):
    """A file a transfer run found unchanged since an earlier run, recorded by reference.

    ``record_id`` is the ``FileRecord`` holding the file's details: the record of the run
    that last copied it (a reference to a reference is never made: a later run refers to
    the same record). A re-run with nothing changed writes two integers per file instead of
    a copy of every record, which on PostgreSQL cost more than both listings together.
    Read a run's records through ``run_records``, never ``FileRecord`` alone.

    Neither column is a foreign key: PostgreSQL checks a foreign key per row (locking the
    run's row 20,000 times for 20,000 files), which made writing the references seven
    times dearer. Nothing deletes runs; the one deletion of records, a share's when it is
    gone from its server (orchestrator.inventory.service), deletes the references to them
    first.
    """

    __tablename__ = "unchanged_files"

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)


class FolderDigest(Base):
    """What a transfer run recorded directly inside one folder of a share, in the form a
    re-run compares with the file servers' own summaries of that folder
    (orchestrator.transfer.host_listing).

    ``digest`` is the digest a host's summary of the folder gives when the folder holds
    exactly the entries the run recorded in it (names, kinds, sizes, last-write times;
    ``samba_host_listing.folder_digest``), NULL when it cannot stand for them (a file not
    transferred, a name the host would not show alike). ``file_ids``: the ids of the
    records (the run's own, or those it refers to) of the folder's files that arrived,
    as packed 64-bit integers, with ``file_bytes`` their sizes' sum; ``hash_algorithm``
    names the algorithm every one of them holds a verified hash of (NULL: not known).

    A re-run whose previous run wrote these rows compares a few hundred digests instead of
    loading every record of the share, and records a clean folder's files by reference
    from ``file_ids`` without reading their records. Written only by runs that read the
    source server's clock and, on a re-run, compared on both hosts' listings; a run's row
    for the share root ('') says it wrote them. Derived data, not records: a run that
    stores its digests deletes those of the pairing's earlier runs.
    """

    __tablename__ = "folder_digests"

    run_id: Mapped[int] = mapped_column(ForeignKey("transfer_runs.id", ondelete="CASCADE"), primary_key=True)
    share_id: Mapped[int] = mapped_column(ForeignKey("shares.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    digest: Mapped[str | None] = mapped_column(String(64))
    hash_algorithm: Mapped[str | None] = mapped_column(String(32))
    file_ids: Mapped[bytes] = mapped_column(LargeBinary)
    file_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


def holds_verified_hash(columns, algorithm: str | None):
    """SQL truth of "the record holds a verified hash of ``algorithm``" over ``columns``
    (``FileRecord.__table__.c`` or ``run_records(...).c``): the source's and the
    destination's hashes of that algorithm, equal. Always true without an algorithm (a
    run that does not verify asks nothing of its records' hashes)."""
    if not algorithm:
        return true()
    return and_(columns.hash_algorithm == algorithm, columns.source_hash.is_not(None),
                columns.destination_hash == columns.source_hash)


# Columns a run's reference to an earlier record does not take from that record.
_NOT_CARRIED = ("run_id", "batch_id", "state", "error_code", "error_message")


def run_records(run_id: int, share_id: int | None = None,
                paths: Sequence[str] | None = None) -> Subquery:
    """Transfer run ``run_id``'s file records, as a subquery with ``FileRecord``'s columns.

    The rows the run wrote, and for each file it found unchanged (``UnchangedFile``) the
    referenced record as this run's: ``run_id`` this run, state ``skipped``, no batch and no
    error; ``id`` stays the referenced record's (what a later run refers to) and
    ``origin_run_id`` names the run that wrote it (this run for its own rows). Every reader
    of a run's records (reconciliation, logs, the next run's baseline) goes through this.

    With ``share_id`` and ``paths``, only those paths of that share: referenced records are
    then looked up by path among the own records of the pairing's earlier runs (an index
    probe per run and path) and kept when the run refers to them, instead of going through
    all of the run's references, which a worker looking up one batch's paths cannot afford
    at millions of files.
    """
    if (share_id is None) != (paths is None):
        raise ValueError("run_records: a share_id and paths go together")
    table = FileRecord.__table__
    references = UnchangedFile.__table__
    runs = TransferRun.__table__
    carried_columns = [
        literal(run_id, BigInteger).label("run_id") if column.name == "run_id"
        else literal(FileState.SKIPPED, column.type).label("state") if column.name == "state"
        else null().label(column.name) if column.name in _NOT_CARRIED
        else column
        for column in table.c]
    origin = table.c.run_id.label("origin_run_id")
    own = select(table, origin).where(table.c.run_id == run_id)
    if paths is None:
        carried = select(*carried_columns, origin).join(
            references, references.c.record_id == table.c.id).where(references.c.run_id == run_id)
    else:
        own = own.where(table.c.share_id == share_id, table.c.relative_path.in_(paths))
        pairing = select(runs.c.pairing_id).where(runs.c.id == run_id).scalar_subquery()
        earlier = select(runs.c.id).where(runs.c.pairing_id == pairing, runs.c.id < run_id)
        carried = select(*carried_columns, origin).where(
            table.c.share_id == share_id, table.c.run_id.in_(earlier), table.c.relative_path.in_(paths),
            exists().where(references.c.run_id == run_id, references.c.record_id == table.c.id))
    return union_all(own, carried).subquery("run_records")


class SidMap(Base):
    """Source SID -> destination SID of a transfer run's migrated local users and groups.

    Written by the orchestrator before any batch of the run is dispatched; proxy workers
    read it by the run's id to translate owner, group and ACE SIDs of every security
    descriptor they copy. ``accounts`` records what happened to each source account
    (created, renamed, merged, skipped, failed, with the reason). Never holds a password.
    """

    __tablename__ = "sid_maps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(
        ForeignKey("transfer_runs.id", ondelete="CASCADE"), unique=True
    )
    entries: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    accounts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CutoverRun(Base):
    """A cutover of one pairing: the destination takes over the source's identity."""

    __tablename__ = "cutover_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    pairing_id: Mapped[int] = mapped_column(
        ForeignKey("pairings.id", ondelete="CASCADE"), index=True
    )
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[RunState] = mapped_column(_enum(RunState, "run_state"), default=RunState.PENDING)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    stages: Mapped[list[CutoverStage]] = relationship(
        back_populates="cutover_run", order_by="CutoverStage.position"
    )


class CutoverStage(Base):
    """One named stage of a cutover run, with its progress and last message."""

    __tablename__ = "cutover_stages"
    __table_args__ = (UniqueConstraint("cutover_run_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cutover_run_id: Mapped[int] = mapped_column(
        ForeignKey("cutover_runs.id", ondelete="CASCADE")
    )
    position: Mapped[int] = mapped_column(Integer, default=0)
    name: Mapped[str] = mapped_column(String(100))
    state: Mapped[RunState] = mapped_column(_enum(RunState, "run_state"), default=RunState.PENDING)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    cutover_run: Mapped[CutoverRun] = relationship(back_populates="stages")


class Event(Base):
    """The audit trail: what happened, when, to which job and server."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_job_id_at", "job_id", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    server_id: Mapped[int | None] = mapped_column(
        ForeignKey("servers.id", ondelete="SET NULL"), index=True
    )
    level: Mapped[EventLevel] = mapped_column(
        _enum(EventLevel, "event_level"), default=EventLevel.INFO
    )
    kind: Mapped[str] = mapped_column(String(100))
    message: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
