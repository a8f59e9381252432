"""The file scan's bookkeeping in the job database: one directory listing at a time.

A share's scan is a tree of directory tasks (``orchestrator.inventory.tasks``). Each task
lists one directory over SMB and hands the listing to ``apply_listing``, which, in one
transaction, stores a ``FileRecord`` (``run_id`` NULL: the inventory baseline) per entry,
removes the records of paths that vanished since the last scan, adds to the share's
counters, and returns the subdirectories to publish after commit. The share root has a
record of its own with the empty path.

The database is the truth about progress. A directory that was found but whose contents
are not listed yet has its record in state ``failed`` with error code ``SCAN_PENDING``:
exactly what is true of it if the scan stopped there. Its own task turns it to
``scanned`` (or to ``failed`` with the NTSTATUS name when it cannot be listed). The scan
is complete when no ``SCAN_PENDING`` record is left; the task that sees that stamps
``Share.scanned_at``. Each transaction starts by writing the share's row, which
serialises the tasks of one share, so exactly one task sees the count reach zero, and a
message delivered twice finds its directory already listed and does nothing.

Errors (a folder the account may not read, a failed logon) are each a ``failed`` record
with the NTSTATUS name and an ``Event`` with a message an administrator can act on; the
scan of everything else goes on.

This module never talks to a server and never publishes before commit: it returns what
to publish.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.orm import Session

from common.db import bulk_insert_file_records
from common.models import EventLevel, FileRecord, FileState, Server, Share, utcnow
from orchestrator.jobs import record_event

PENDING = "SCAN_PENDING"
LOOP = "STATUS_STOPPED_ON_SYMLINK"
PENDING_MESSAGE = "folder found; its contents are not listed yet"
EXCLUDED_MESSAGE = "not scanned: a folder Storage Migration Service never copies"
# Folders (and a file) at a share's root that Storage Migration Service never copies.
EXCLUDED_NAMES = frozenset(
    name.lower()
    for name in ("Windows", "Program Files", "Users", "System Volume Information",
                 "$Recycle.bin", "pagefile.sys")
)
ATTRIBUTE_DIRECTORY = 0x10
ATTRIBUTE_REPARSE_POINT = 0x400
_DELETE_CHUNK = 500


@dataclass(frozen=True)
class ScanOptions:
    """What a share scan leaves out; travels in task messages as a plain dict."""

    skip_excluded_folders: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-safe keyword arguments."""
        return {"skip_excluded_folders": self.skip_excluded_folders}

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "ScanOptions":
        """Options back from a task message (unknown keys ignored)."""
        values = values or {}
        return cls(skip_excluded_folders=bool(values.get("skip_excluded_folders", True)))


@dataclass(frozen=True)
class Entry:
    """One entry of a directory listing, as the scan stores it (times are raw FILETIMEs)."""

    name: str
    path: str
    size: int
    creation_time: int
    last_access_time: int
    last_write_time: int
    change_time: int
    attributes: int
    file_id: int = 0

    @property
    def is_dir(self) -> bool:
        """True for a directory."""
        return bool(self.attributes & ATTRIBUTE_DIRECTORY)

    @property
    def is_reparse_point(self) -> bool:
        """True for a reparse point (never entered)."""
        return bool(self.attributes & ATTRIBUTE_REPARSE_POINT)

    @classmethod
    def from_dir_entry(cls, entry) -> "Entry":
        """From ``common.smb.walk.DirEntry``."""
        return cls(entry.name, entry.path, entry.size, entry.creation_time,
                   entry.last_access_time, entry.last_write_time, entry.change_time,
                   entry.attributes, entry.file_id)


@dataclass(frozen=True)
class ListingError:
    """Why a directory could not be listed: the NTSTATUS name and an admin-readable message."""

    status_name: str
    message: str


@dataclass(frozen=True)
class DirectoryTask:
    """A directory to list: what a scan task message carries (no credential, no data).

    ``ancestors`` are the server's file ids of the directories from the share root down
    to this one (inclusive, when known): a subdirectory with one of those ids is a link
    back to an ancestor and is not entered.
    """

    share_id: int
    path: str
    fresh: bool
    ancestors: tuple[int, ...] = ()

    def kwargs(self, options: ScanOptions) -> dict[str, Any]:
        """Keyword arguments of the scan task for this directory."""
        return {"share_id": self.share_id, "path": self.path, "fresh": self.fresh,
                "ancestors": list(self.ancestors), "options": options.to_dict()}


def _scan_rows(share_id: int):
    return and_(FileRecord.share_id == share_id, FileRecord.run_id.is_(None))


def _like_escape(text: str) -> str:
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def pending_directories(session: Session, share_id: int) -> int:
    """Directories of the share's current scan found but not listed yet."""
    return session.scalar(
        select(func.count()).select_from(FileRecord).where(
            _scan_rows(share_id), FileRecord.state == FileState.FAILED,
            FileRecord.error_code == PENDING)
    ) or 0


def scan_errors(session: Session, share_id: int) -> int:
    """Entries of the share's last scan that failed (folders that could not be listed...)."""
    return session.scalar(
        select(func.count()).select_from(FileRecord).where(
            _scan_rows(share_id), FileRecord.state == FileState.FAILED,
            FileRecord.error_code != PENDING)
    ) or 0


def scan_is_running(session: Session, share_id: int) -> bool:
    """True while a scan of the share has directories left to list."""
    return pending_directories(session, share_id) > 0


def pending_tasks(session: Session, share_id: int) -> list[DirectoryTask]:
    """A task for every directory of the share's running scan that is still to be listed
    (to publish again when messages were lost; a duplicate does nothing)."""
    paths = session.scalars(
        select(FileRecord.relative_path).where(
            _scan_rows(share_id), FileRecord.state == FileState.FAILED, FileRecord.error_code == PENDING)
        .order_by(FileRecord.relative_path)
    ).all()
    return [DirectoryTask(share_id, path, False) for path in paths]


def start_share_scan(session: Session, share: Share) -> DirectoryTask:
    """Begin (or begin again) the scan of ``share``: reset its counters, mark its root
    pending, and return the root's task, to be published once the caller commits.

    Records of the previous scan stay until the new scan lists their directory: the
    baseline is updated in place, never emptied first.
    """
    session.execute(
        update(Share).where(Share.id == share.id)
        .values(file_count=0, directory_count=0, total_bytes=0, scanned_at=None)
        .execution_options(synchronize_session=False)
    )
    root = session.scalar(select(FileRecord).where(_scan_rows(share.id), FileRecord.relative_path == ""))
    fresh = session.scalar(select(func.count()).select_from(FileRecord).where(_scan_rows(share.id))) == 0
    if root is None:
        bulk_insert_file_records(session, [{
            "share_id": share.id, "relative_path": "", "is_dir": True,
            "attributes": ATTRIBUTE_DIRECTORY, "state": FileState.FAILED,
            "error_code": PENDING, "error_message": PENDING_MESSAGE,
        }])
    else:
        root.state, root.error_code, root.error_message = FileState.FAILED, PENDING, PENDING_MESSAGE
    session.flush()
    return DirectoryTask(share.id, "", fresh)


def _direct_children(session: Session, share_id: int, path: str) -> dict[str, tuple[int, bool]]:
    """{path: (record id, is_dir)} of the records directly inside ``path``."""
    if path:
        prefix = path + "\\"
        pattern = _like_escape(prefix) + "%"
        deeper = pattern + "\\%"
    else:
        prefix, pattern, deeper = "", "%", "%\\%"
    rows = session.execute(
        select(FileRecord.id, FileRecord.relative_path, FileRecord.is_dir).where(
            _scan_rows(share_id),
            FileRecord.relative_path != "",
            FileRecord.relative_path.like(pattern, escape="!"),
            FileRecord.relative_path.not_like(deeper, escape="!"),
        )
    ).all()
    # LIKE may fold case (SQLite): keep exact matches only.
    return {
        relative: (record_id, is_dir)
        for record_id, relative, is_dir in rows
        if relative.startswith(prefix) and "\\" not in relative[len(prefix):]
    }


def _subtree_ids(session: Session, share_id: int, path: str) -> list[int]:
    prefix = path + "\\"
    rows = session.execute(
        select(FileRecord.id, FileRecord.relative_path).where(
            _scan_rows(share_id), FileRecord.relative_path.like(_like_escape(prefix) + "%", escape="!"))
    ).all()
    return [record_id for record_id, relative in rows if relative.startswith(prefix)]


def _delete_ids(session: Session, ids: Sequence[int]) -> None:
    for start in range(0, len(ids), _DELETE_CHUNK):
        session.execute(
            delete(FileRecord).where(FileRecord.id.in_(ids[start:start + _DELETE_CHUNK]))
            .execution_options(synchronize_session=False)
        )


def is_excluded(path: str, name: str, options: ScanOptions) -> bool:
    """True for a share-root entry SMS never copies (when the options skip those)."""
    return options.skip_excluded_folders and "\\" not in path and name.lower() in EXCLUDED_NAMES


def apply_listing(
    session: Session,
    share_id: int,
    path: str,
    entries: Iterable[Entry],
    error: ListingError | None,
    *,
    fresh: bool,
    options: ScanOptions,
    ancestors: tuple[int, ...] = (),
) -> list[DirectoryTask] | None:
    """Store one directory's listing (or why it failed) and return the subdirectories to
    list next; None when there was nothing to do (already listed, or not part of a scan).

    ``fresh`` says the directory had no records before this scan, so nothing under it
    can have vanished; ``ancestors`` are the file ids from the root down to this
    directory. The caller commits, then publishes the returned tasks.
    """
    # Lock the share's row first: the tasks of one share apply their listings one at a time.
    session.execute(
        update(Share).where(Share.id == share_id).values(total_bytes=Share.total_bytes)
        .execution_options(synchronize_session=False)
    )
    own = session.execute(
        select(FileRecord.id, FileRecord.state, FileRecord.error_code)
        .where(_scan_rows(share_id), FileRecord.relative_path == path)
    ).first()
    if own is None or own.state != FileState.FAILED or own.error_code != PENDING:
        return None
    share = session.get(Share, share_id)
    server = session.get(Server, share.server_id)
    follow: list[DirectoryTask] = []

    if error is not None:
        session.execute(
            update(FileRecord).where(FileRecord.id == own.id)
            .values(state=FileState.FAILED, error_code=error.status_name, error_message=error.message)
            .execution_options(synchronize_session=False)
        )
        record_event(
            session, "inventory.scan.error", error.message, job_id=server.job_id,
            server_id=server.id, level=EventLevel.ERROR,
            detail={"share_id": share_id, "share": share.name, "path": path,
                    "status": error.status_name},
        )
    else:
        entries = list(entries)
        existing = {} if fresh else _direct_children(session, share_id, path)
        loops = {entry.path for entry in entries
                 if entry.is_dir and entry.file_id and entry.file_id in ancestors}
        entered = {
            entry.path for entry in entries
            if entry.is_dir and not entry.is_reparse_point and not is_excluded(path, entry.name, options)
            and entry.path not in loops
        }
        # Upsert by path: the old records of this directory's entries go, the listing comes
        # in; so do the subtrees of folders that vanished or are no longer entered.
        doomed: list[int] = [record_id for record_id, _ in existing.values()]
        for relative, (_, was_dir) in existing.items():
            if was_dir and relative not in entered:
                doomed.extend(_subtree_ids(session, share_id, relative))
        _delete_ids(session, doomed)

        rows: list[dict[str, Any]] = []
        files = directories = total = 0
        for entry in entries:
            row = {
                "share_id": share_id, "relative_path": entry.path, "is_dir": entry.is_dir,
                "size": entry.size, "creation_time": entry.creation_time,
                "last_write_time": entry.last_write_time,
                "last_access_time": entry.last_access_time, "change_time": entry.change_time,
                "attributes": entry.attributes, "state": FileState.SCANNED,
            }
            if is_excluded(path, entry.name, options):
                row.update(state=FileState.SKIPPED, error_message=EXCLUDED_MESSAGE)
            elif entry.is_dir:
                directories += 1
                if entry.path in entered:
                    row.update(state=FileState.FAILED, error_code=PENDING, error_message=PENDING_MESSAGE)
                    follow.append(DirectoryTask(share_id, entry.path, fresh or entry.path not in existing,
                                                (*ancestors, entry.file_id)))
                elif entry.path in loops:
                    message = (f"share {share.name!r}: folder {entry.path!r} not entered: it is the same "
                               "folder as one of its ancestors (a link loop)")
                    row.update(state=FileState.FAILED, error_code=LOOP, error_message=message)
                    record_event(session, "inventory.scan.error", message, job_id=server.job_id,
                                 server_id=server.id, level=EventLevel.ERROR,
                                 detail={"share_id": share_id, "share": share.name, "path": entry.path,
                                         "status": LOOP})
            else:
                files += 1
                total += entry.size
            rows.append(row)
        bulk_insert_file_records(session, rows)
        session.execute(
            update(FileRecord).where(FileRecord.id == own.id)
            .values(state=FileState.SCANNED, error_code=None, error_message=None)
            .execution_options(synchronize_session=False)
        )
        session.execute(
            update(Share).where(Share.id == share_id).values(
                file_count=Share.file_count + files,
                directory_count=Share.directory_count + directories,
                total_bytes=Share.total_bytes + total,
            ).execution_options(synchronize_session=False)
        )

    if pending_directories(session, share_id) == 0:
        finished_at = utcnow()
        session.execute(
            update(Share).where(Share.id == share_id).values(scanned_at=finished_at)
            .execution_options(synchronize_session=False)
        )
        session.expire(share)
        errors = scan_errors(session, share_id)
        record_event(
            session, "inventory.scan.completed",
            f"share {share.name!r} of {server.name!r} scanned: {share.file_count} files, "
            f"{share.directory_count} folders, {share.total_bytes} bytes, {errors} errors",
            job_id=server.job_id, server_id=server.id,
            level=EventLevel.WARNING if errors else EventLevel.INFO,
            detail={"share_id": share_id, "share": share.name, "files": share.file_count,
                    "directories": share.directory_count, "bytes": share.total_bytes,
                    "errors": errors},
        )
    return follow
