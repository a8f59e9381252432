"""Copy files and directories from one share to another with nothing lost.

``copy_batch(source, destination, entries, options)`` copies each entry (a share-relative
path) from the source share to the same relative path on the destination share and
returns one ``FileResult`` per entry. A file is copied with its data, every alternate
data stream, its attributes, its creation / last-write / last-access times exact to
100 ns (raw FILETIMEs) and its owner, group and DACL byte for byte (SACL on request); a
directory likewise, with its times set after the files of the batch were written into it.

How a file is written, so that nothing half-done ever looks finished and the copying
account can never lock itself out:

1. data and streams go to a temporary name in the destination directory
   (``~sms-<digest>.partial``; not a dot name, which Samba would report hidden), opened
   with every access the later steps need (access is checked at open, so a DACL that
   denies the copying account cannot stop them);
2. only once every WRITE has been answered with success, and the source has been looked
   at once more (its size, last-write and change time, from the CLOSE of the compound
   that read a small file, or from closing a large file's handle) and found unmoved: on
   the still-open handle the security descriptor (given at CREATE for small files), a
   rename with ReplaceIfExists onto the real name, then times and attributes (after the
   rename: Samba sets ARCHIVE on a renamed file). Samba 4.17 carries on with a related
   compound after a failed WRITE, so the rename is never sent in the same compound as
   the data;
3. a read-only file in the way is made writable just before the rename.

A killed copier leaves at most a ``.partial`` file, which the next run replaces; a failed
write (disk full ...) deletes its temporary file and reports the NTSTATUS; a source that
moved while it was copied deletes it too and is reported SOURCE_CHANGED (a small file
caught moving is first read again one at a time, as it is now).

Speed: everything after logon travels over ``common.smb.fastpath.FastChannel``
(pre-packed, signed or encrypted messages on the socket smbprotocol authenticated; about
0.2 ms of client CPU per small file instead of about 2.6 ms through smbprotocol's
objects); smbprotocol keeps negotiate, session setup, tree connect and the connection
pool, and gets the sessions back at the end of each batch. Small files (up to
``CopyOptions.compound_limit``, no streams) are pipelined, PIPELINE_FILES in flight on
each side: CREATE + QUERY_INFO(security) + QUERY_INFO(streams) + READ + CLOSE on the
source; CREATE (with the SD) + WRITE [+ READ back], then rename + SET_INFO(times,
attributes) + CLOSE on the destination. What the destination already holds is learnt up
front (directories listed, single files probed, pipelined). Larger files and files with
streams go one at a time with pipelined 1 MiB READs and WRITEs (all-zero chunks are not
sent); within one session (same server, share and account) with FSCTL_SRV_COPYCHUNK.
Every byte read from the source is hashed as it passes (checksum.py). A server limited to
SMB 2.0.2 (no multi-credit) is served the same way with 64 KiB READs and WRITEs; there is
no per-file smbprotocol fallback left (smbprotocol never speaks SMB1 either).

This module must never: normalise or case-fold a name, "repair" a time or ACL it read,
write a file under its real name before it is complete, or know about the job database.
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from common.smb import fastpath as fp
from common.smb import messages as m
from common.smb import metadata as md
from common.smb.checksum import DEFAULT_ALGORITHM, new_hasher
from common.smb.connection import SmbEndpoint, get_tree
from common.smb.errors import SmbFileError
from common.smb.fastpath import ChannelBroken, DestFile, FastChannel, FastPathError, FileInfo, Handle, SourceFile

STATUS_END_OF_FILE = 0xC0000011
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_BUFFER_TOO_SMALL = 0xC0000023
STATUS_BUFFER_OVERFLOW = 0x80000005
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_OBJECT_NAME_COLLISION = 0xC0000035
STATUS_OBJECT_PATH_NOT_FOUND = 0xC000003A
STATUS_DATA_ERROR = 0xC000003E
STATUS_FILE_IS_A_DIRECTORY = 0xC00000BA
STATUS_CANNOT_DELETE = 0xC0000121
NOT_FOUND = (STATUS_OBJECT_NAME_NOT_FOUND, STATUS_OBJECT_PATH_NOT_FOUND)

TEMP_PREFIX = "~sms-"
TEMP_SUFFIX = ".partial"
# status_name of a file whose source moved while it was copied (the next run copies it).
SOURCE_CHANGED = "SOURCE_CHANGED"

# Attributes compared when deciding that a destination is unchanged: the ones Samba and
# NTFS both keep. NORMAL (0x80) and 0 both mean "none".
COMPARED_ATTRIBUTES = 0x01 | 0x02 | 0x04 | 0x20 | 0x10
FILE_OPENED = 1
COPYCHUNK_CHUNK = 1 << 20
COPYCHUNK_CHUNKS_PER_REQUEST = 16
# Small files in flight at once on each side of the pipeline.
PIPELINE_FILES = 32
# READs / WRITEs of a large file in flight at once, and their size.
RANGE_DEPTH = 8
RANGE_CHUNK = 1 << 20
# A destination directory holding this many of a batch's files is listed, not probed.
LISTING_MIN_FILES = 4


class Outcome(str, enum.Enum):
    """What happened to one entry."""

    COPIED = "copied"
    SKIPPED = "skipped-unchanged"
    FAILED = "failed"


@dataclass(frozen=True)
class FileEntry:
    """One path to copy, relative to the share root ("dir/file" or "dir\\file").

    ``is_directory`` None means "find out from the source". ``recorded_hash`` is the
    source hash a previous successful copy recorded; with ``CopyOptions.verify`` an
    unchanged-looking destination is re-hashed and skipped only if it still matches.
    """

    path: str
    is_directory: bool | None = None
    recorded_hash: str | None = None


@dataclass(frozen=True)
class CopyOptions:
    """How to copy. The defaults keep everything but the SACL and verify nothing twice."""

    checksum: str = DEFAULT_ALGORITHM
    verify: bool = False
    skip_unchanged: bool = True
    copy_security: bool = True
    copy_sacl: bool = False
    server_side_copy: bool = True
    compound_limit: int = 1 << 20
    destination_prefix: str = ""


@dataclass
class FileResult:
    """The outcome of one entry, with the source's metadata as copied.

    Times are raw FILETIMEs; ``status_name``/``status_code``/``message`` are set on
    failure only. ``destination_hash`` is set when the destination was re-read (verify).
    ``security_descriptor`` is the source's self-relative descriptor as read for the copy
    (None when security is not copied or the entry failed): the caller takes the owner
    from it, or translates its SIDs, without reading the source a second time.
    """

    path: str
    is_directory: bool
    outcome: Outcome
    size: int = 0
    creation_time: int = 0
    last_access_time: int = 0
    last_write_time: int = 0
    attributes: int = 0
    hash_algorithm: str = ""
    source_hash: str | None = None
    destination_hash: str | None = None
    streams: int = 0
    server_side: bool = False
    status_name: str | None = None
    status_code: str | None = None
    message: str | None = None
    security_descriptor: bytes | None = None


class SourceChanged(SmbFileError):
    """The source file's size or last-write / change time moved while it was copied.

    Not an NTSTATUS: ``status_name`` is SOURCE_CHANGED and ``status_hex`` None.
    """

    def __init__(self, path: str):
        super().__init__(0, "the source changed while it was being copied", path)
        self.status_name = SOURCE_CHANGED
        self.args = (f"{SOURCE_CHANGED}: {self.message}: {path!r}",)

    @property
    def status_hex(self) -> None:
        """None: there is no NTSTATUS code."""
        return None


def temp_name(path: str) -> str:
    """The temporary name a file is written under before it is renamed to ``path``.

    Short and fixed per target (a re-run replaces a crashed run's leftover), in the same
    directory so the final rename never crosses directories.
    """
    path = m.smb_path(path)
    parent, _, name = path.rpartition("\\")
    digest = hashlib.sha1(name.encode("utf-16-le", "surrogatepass")).hexdigest()[:20]
    temp = f"{TEMP_PREFIX}{digest}{TEMP_SUFFIX}"
    return f"{parent}\\{temp}" if parent else temp


def is_temp_name(name: str) -> bool:
    """True for a name this engine writes in-progress files under."""
    base = name.replace("/", "\\").rpartition("\\")[2]
    return base.startswith(TEMP_PREFIX) and base.endswith(TEMP_SUFFIX)


def _join(prefix: str, path: str) -> str:
    prefix, path = m.smb_path(prefix), m.smb_path(path)
    return f"{prefix}\\{path}" if prefix and path else prefix or path


def _compared(attributes: int) -> int:
    return attributes & COMPARED_ATTRIBUTES


def _entry(item) -> FileEntry:
    if isinstance(item, FileEntry):
        return item
    if isinstance(item, str):
        return FileEntry(item)
    return FileEntry(item.path, bool(item.is_dir))


def copy_batch(source: SmbEndpoint, destination: SmbEndpoint, entries: Iterable,
               options: CopyOptions | None = None) -> list[FileResult]:
    """Copy ``entries`` from ``source`` to ``destination``; one FileResult each, in order.

    Entries are share-relative paths (str), ``FileEntry`` objects, or walker entries
    (anything with ``.path`` and ``.is_dir``). Files are copied first, then directories,
    deepest first, so a directory's times are set after its files in this batch.
    A failure of one entry is recorded in its result and the batch goes on.

    Everything goes through a FastChannel on each pooled session (one channel when
    source and destination are the same session); the sessions are handed back to
    smbprotocol before returning. A lost connection fails the entries not yet done with
    STATUS_TRANSPORT_ERROR; the pool replaces the session on the next batch.
    """
    options = options or CopyOptions()
    new_hasher(options.checksum)  # an unknown algorithm fails the batch up front
    items = [_entry(item) for item in entries]
    source_tree, destination_tree = get_tree(source), get_tree(destination)
    results: dict[int, FileResult] = {}
    source_channel = FastChannel.attach(source_tree.connection, source_tree.session, source_tree.tree)
    destination_channel = source_channel
    try:
        if destination_tree is not source_tree:
            destination_channel = FastChannel.attach(destination_tree.connection, destination_tree.session,
                                                     destination_tree.tree)
        copier = _Copier(source_channel, destination_channel, options)
        directories = [index for index, entry in enumerate(items) if entry.is_directory]
        files = [(index, entry) for index, entry in enumerate(items) if not entry.is_directory]
        if files:
            directories += copier.copy_files(files, results)
        directories.sort(key=lambda i: -m.smb_path(items[i].path).count("\\"))
        for index in directories:
            results[index] = copier.copy_directory(items[index])
    except ChannelBroken as exc:
        lost = SmbFileError(0, f"connection lost: {exc}")
        for index, entry in enumerate(items):
            if index not in results:
                results[index] = _failed(entry, bool(entry.is_directory), lost, options)
    finally:
        if destination_channel is not source_channel:
            destination_channel.release()
        source_channel.release()
    return [results[i] for i in range(len(items))]


def copy_file(source: SmbEndpoint, destination: SmbEndpoint, path: str,
              options: CopyOptions | None = None) -> FileResult:
    """Copy one file or directory; see copy_batch."""
    return copy_batch(source, destination, [path], options)[0]


def _failed(entry: FileEntry, directory: bool, exc: SmbFileError, options: CopyOptions) -> FileResult:
    return FileResult(
        path=entry.path, is_directory=directory, outcome=Outcome.FAILED,
        hash_algorithm=options.checksum, status_name=exc.status_name,
        status_code=exc.status_hex, message=str(exc),
    )


def _result(entry: FileEntry, info: FileInfo, outcome: Outcome, options: CopyOptions,
            directory: bool, descriptor: bytes | None) -> FileResult:
    return FileResult(
        path=entry.path, is_directory=directory, outcome=outcome,
        size=0 if directory else info.end_of_file, creation_time=info.creation_time,
        last_access_time=info.last_access_time, last_write_time=info.last_write_time,
        attributes=info.attributes, hash_algorithm=options.checksum,
        security_descriptor=descriptor if options.copy_security else None,
    )


def _unchanged(source: FileInfo, existing: FileInfo | None) -> bool:
    return (
        existing is not None
        and existing.end_of_file == source.end_of_file
        and existing.last_write_time == source.last_write_time
        and _compared(existing.attributes) == _compared(source.attributes)
    )


def _moved(before: FileInfo, after: FileInfo | None) -> bool:
    """True when a file's size, last-write or change time differs between two looks at it
    (None: the second look found nothing). Last-access and creation times are left out:
    reading moves the one, and Samba derives the other from the rest for files it did
    not create."""
    return after is None or (after.end_of_file, after.last_write_time, after.change_time) != (
        before.end_of_file, before.last_write_time, before.change_time)


def _directory_times(info: FileInfo) -> tuple[int, int, int, int]:
    """What must match for a directory's times and attributes to count as unchanged:
    creation, last-access and last-write times and the compared attributes. (The change
    time is sent but not compared: Samba ignores a change time it is sent and reports the
    last-write time, so from a source that keeps a true change time it would never match.)"""
    return info.creation_time, info.last_access_time, info.last_write_time, _compared(info.attributes)


def _descriptor_size(descriptor: bytes) -> str:
    """'N bytes, M DACL entries' of a self-relative security descriptor, for messages."""
    dacl = int.from_bytes(descriptor[16:20], "little") if len(descriptor) >= 20 else 0
    entries = int.from_bytes(descriptor[dacl + 4:dacl + 6], "little") if dacl else 0
    return f"{len(descriptor):,} bytes, {entries:,} DACL entries"


def _digest(data: bytes, algorithm: str) -> str:
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return hasher.hexdigest()


def _stream_name(name: str) -> str:
    """":name:$DATA" -> ":name" (what a CREATE of "file:name" takes)."""
    return name[: -len(":$DATA")] if name.endswith(":$DATA") else name


@dataclass
class _Small:
    """A small file handed to the destination pipeline, and what finishing it needs."""

    index: int
    entry: FileEntry
    target: str
    result: FileResult
    source: SourceFile
    existing: FileInfo | None
    readonly_cleared: bool


class _Copier:
    """Copies the entries of one batch over a source and a destination FastChannel."""

    def __init__(self, source: FastChannel, destination: FastChannel, options: CopyOptions):
        self.source = source
        self.destination = destination
        self.options = options
        self.same_session = source is destination
        self.security_information = md.security_information(options.copy_sacl)
        self.made_directories: set[str] = set()
        self.chunk = min(RANGE_CHUNK, source.max_read, destination.max_write)

    # --- the batch ----------------------------------------------------------------------
    def copy_files(self, files: list[tuple[int, FileEntry]], results: dict[int, FileResult]) -> list[int]:
        """Copy ``files`` into ``results``; returns the indexes that turned out to be directories."""
        options = self.options
        targets = {index: _join(options.destination_prefix, entry.path) for index, entry in files}
        existing = self._destination_index(list(targets.values()))
        directories: list[int] = []
        waiting: dict[str, deque[_Small]] = {}
        retry: list[_Small] = []

        def small_files() -> Iterator[DestFile]:
            read = self.source.read_small_files(
                [m.smb_path(entry.path) for _index, entry in files],
                max_bytes=min(options.compound_limit, self.source.max_read),
                security=options.copy_security, streams=True, sacl=options.copy_sacl, depth=PIPELINE_FILES,
            )
            for (index, entry), source in zip(files, read):
                target = targets[index]
                started = self._start(index, entry, target, source, existing.get(target))
                if started is None:
                    directories.append(index)
                elif isinstance(started, FileResult):
                    results[index] = started
                else:
                    waiting.setdefault(target, deque()).append(started)
                    info = source.info
                    yield DestFile(target, source.data, info.creation_time, info.last_access_time,
                                   info.last_write_time, 0, m.wire_attributes(info.attributes),
                                   source.security if options.copy_security else None, temp_name(target))

        for written in self.destination.write_small_files(
                small_files(), replace=True, read_back=options.verify, sacl=options.copy_sacl,
                depth=PIPELINE_FILES):
            small = waiting[written.path].popleft()
            if written.status == 0:
                results[small.index] = small.result
            elif written.command == "CREATE" and (written.status in (
                    STATUS_OBJECT_PATH_NOT_FOUND, STATUS_ACCESS_DENIED, STATUS_OBJECT_NAME_COLLISION)
                    or (options.copy_security and small.source.security)):
                # A missing directory or a read-only leftover: repaired one by one. A CREATE
                # carrying the SD may have failed on the SD alone: one by one, its refusal is
                # told apart (SET_INFO security) and named.
                retry.append(small)
            else:
                if small.readonly_cleared:
                    self._restore_attributes(small.target, small.existing)
                error = SmbFileError(written.status, f"write ({written.command}) failed", small.target)
                results[small.index] = _failed(small.entry, False, error, options)
        for small in retry:
            results[small.index] = self._copy_one(small.entry, small.target, small.source, small.existing)
        return directories

    def _start(self, index: int, entry: FileEntry, target: str, source: SourceFile,
               existing: FileInfo | None):
        """A pipelined source read's outcome: a FileResult, a _Small to write, or None (a directory)."""
        options = self.options
        path = m.smb_path(entry.path)
        if source.status == STATUS_FILE_IS_A_DIRECTORY and entry.is_directory is None:
            return None
        try:
            # A descriptor over the compound's 64 KiB buffer is read again one file at a time.
            large_descriptor = source.command == "QUERY_INFO security" and source.status in (
                STATUS_BUFFER_TOO_SMALL, STATUS_BUFFER_OVERFLOW)
            if source.status and not large_descriptor:
                raise SmbFileError(source.status, f"read source ({source.command}) failed", path)
            info = source.info
            if existing is not None and existing.attributes & m.FILE_ATTRIBUTE_DIRECTORY:
                raise SmbFileError(STATUS_FILE_IS_A_DIRECTORY, "destination is a directory", target)
            if options.skip_unchanged and _unchanged(info, existing) and not (entry.recorded_hash and options.verify):
                result = _result(entry, info, Outcome.SKIPPED, options, directory=False, descriptor=source.security)
                result.source_hash = entry.recorded_hash
                return result
            # A file that moved while the compound read it is copied one at a time, as it is now.
            small = (not source.streams and source.complete and not _moved(info, source.after)
                     and info.end_of_file <= min(options.compound_limit, self.destination.max_write)
                     and not (options.skip_unchanged and _unchanged(info, existing)))
            if not small:
                return self._copy_one(entry, target, source, existing)
            result = _result(entry, info, Outcome.COPIED, options, directory=False, descriptor=source.security)
            result.source_hash = _digest(source.data, options.checksum)
            if options.verify:  # renamed only if the bytes read back were identical
                result.destination_hash = result.source_hash
            cleared = self._make_replaceable(target, existing)
            return _Small(index, entry, target, result, source, existing, cleared)
        except SmbFileError as exc:
            return _failed(entry, False, exc, options)

    # --- what is on the destination -------------------------------------------------------
    def _destination_index(self, targets: list[str]) -> dict[str, FileInfo | None]:
        """What exists at each target now: directories holding LISTING_MIN_FILES or more
        targets are listed once (a missing one is created), other targets are probed,
        pipelined."""
        counts: dict[str, int] = {}
        for target in targets:
            parent = target.rpartition("\\")[0]
            counts[parent] = counts.get(parent, 0) + 1
        listings: dict[str, dict[str, FileInfo] | None] = {}
        for parent, count in counts.items():
            if count < LISTING_MIN_FILES:
                continue
            try:
                listings[parent] = self.destination.list_directory(parent)
            except FastPathError as exc:
                if exc.status not in NOT_FOUND:
                    continue  # probe its files one by one
                try:
                    self._make_parents(parent + "\\-")
                except FastPathError:
                    continue  # each file will report why it cannot be written
                listings[parent] = {}
        found: dict[str, FileInfo | None] = {}
        probe = []
        for target in targets:
            parent, _, name = target.rpartition("\\")
            listing = listings.get(parent)
            if listing is None:
                probe.append(target)
            else:
                found[target] = listing.get(name)
        for target, _status, info in self.destination.stat_files(probe, depth=PIPELINE_FILES):
            found[target] = info
        return found

    def _make_parents(self, target: str) -> None:
        """Create every missing directory above ``target`` on the destination."""
        parts = target.split("\\")[:-1]
        for depth in range(1, len(parts) + 1):
            directory = "\\".join(parts[:depth])
            if directory in self.made_directories:
                continue
            handle = self.destination.open(directory, fp.FILE_READ_ATTRIBUTES, fp.FILE_OPEN_IF,
                                           options=fp.FILE_DIRECTORY_FILE)
            self.destination.close(handle)
            self.made_directories.add(directory)

    def _set_attributes(self, path: str, attributes: int) -> None:
        """Set only the attributes of an existing destination file (errors are raised)."""
        handle = self.destination.open(path, fp.FILE_READ_ATTRIBUTES | fp.FILE_WRITE_ATTRIBUTES, options=0)
        try:
            self.destination.set_basic_info(handle, 0, 0, 0, 0, m.wire_attributes(attributes))
        finally:
            self.destination.close(handle)

    def _make_replaceable(self, target: str, existing: FileInfo | None) -> bool:
        """Clear READONLY on a destination file about to be replaced; True if it was set."""
        if existing is None or not existing.attributes & m.FILE_ATTRIBUTE_READONLY:
            return False
        self._set_attributes(target, existing.attributes & ~m.FILE_ATTRIBUTE_READONLY)
        return True

    def _restore_attributes(self, target: str, existing: FileInfo) -> None:
        """Put back the attributes of a file that could not be replaced (best effort)."""
        try:
            self._set_attributes(target, existing.attributes)
        except SmbFileError:
            pass

    def _remove_file(self, path: str) -> bool:
        """Delete a file even if it is read-only; False when there was none."""
        try:
            handle = self.destination.open(path, fp.DELETE | fp.FILE_WRITE_ATTRIBUTES | fp.FILE_READ_ATTRIBUTES)
        except FastPathError as exc:
            if exc.status in NOT_FOUND:
                return False
            raise
        try:
            self.destination.set_basic_info(handle, 0, 0, 0, 0, m.FILE_ATTRIBUTE_NORMAL)
            self.destination.delete_on_close(handle)
        finally:
            self.destination.close(handle, query=False)
        return True

    # --- one file at a time -----------------------------------------------------------------
    def _copy_one(self, entry: FileEntry, target: str, known: SourceFile, existing: FileInfo | None) -> FileResult:
        """Copy a file that does not fit the pipeline (large, with streams, to re-check or
        to repair); ``known`` is what the pipelined read already learnt of it."""
        options = self.options
        path = m.smb_path(entry.path)
        access = fp.SOURCE_ACCESS | fp.SYNCHRONIZE | (fp.ACCESS_SYSTEM_SECURITY if options.copy_sacl else 0)
        try:
            handle = self.source.open(path, access)
        except SmbFileError as exc:
            return _failed(entry, False, exc, options)
        try:
            info, first, descriptor, streams = known.info, known.data, known.security, known.streams
            if known.status or _moved(info, known.after) or _moved(info, handle.info):
                # Changed while or since the pipelined read, or its descriptor did not fit that
                # read: copy it as it is now. (Otherwise keep the times seen before that read
                # moved the last-access time.)
                info, first = handle.info, b""
                descriptor = (self.source.query_security(handle, self.security_information)
                              if options.copy_security else None)
                streams = self.source.query_streams(handle)
            if options.skip_unchanged and _unchanged(info, existing):
                destination_hash = None
                if entry.recorded_hash and options.verify:
                    destination_hash = self._hash_destination(target, existing.end_of_file)
                if destination_hash is None or destination_hash == entry.recorded_hash:
                    result = _result(entry, info, Outcome.SKIPPED, options, directory=False, descriptor=descriptor)
                    result.source_hash = entry.recorded_hash
                    result.destination_hash = destination_hash
                    return result
            result = _result(entry, info, Outcome.COPIED, options, directory=False, descriptor=descriptor)
            result.streams = len(streams)
            cleared = self._make_replaceable(target, existing)
            try:
                self._write_file(path, target, handle, info, first, descriptor, streams, result)
            except SmbFileError:
                if cleared:
                    self._restore_attributes(target, existing)
                raise
            return result
        except SmbFileError as exc:
            return _failed(entry, False, exc, options)
        finally:
            try:
                if not handle.closed:  # _write_file closes it to re-check the source
                    self.source.close(handle)
            except FastPathError:
                pass

    def _open_temp(self, temp: str, target: str) -> Handle:
        """Create (or truncate) the temporary file; a missing directory is created and a
        read-only leftover removed, once each."""
        access = (fp.DEST_ACCESS | fp.FILE_READ_DATA | fp.SYNCHRONIZE
                  | (fp.ACCESS_SYSTEM_SECURITY if self.options.copy_sacl else 0))
        repaired = set()
        while True:
            try:
                # Not shared: a second copier of the same file (a batch dispatched again
                # while the first still runs) fails here instead of writing into it.
                return self.destination.open(temp, access, fp.FILE_OVERWRITE_IF, share=0,
                                             attributes=fp.FILE_ATTRIBUTE_NORMAL)
            except FastPathError as exc:
                if exc.status == STATUS_OBJECT_PATH_NOT_FOUND and "parents" not in repaired:
                    repaired.add("parents")
                    self._make_parents(target)
                elif exc.status in (STATUS_ACCESS_DENIED, STATUS_OBJECT_NAME_COLLISION, STATUS_CANNOT_DELETE) \
                        and "leftover" not in repaired and self._remove_file(temp):
                    repaired.add("leftover")
                else:
                    raise SmbFileError(exc.status, "create temporary file failed", target) from None

    def _write_file(self, path: str, target: str, source: Handle, info: FileInfo, first: bytes,
                    descriptor: bytes | None, streams: list[tuple[str, int]], result: FileResult) -> None:
        """Temp file, pipelined (or server-side) data, streams, [verify]; then the source
        handle is closed and its size and times compared (SourceChanged when they moved);
        then SD, rename, times and attributes on the open handle."""
        options = self.options
        destination = self.destination
        temp = temp_name(target)
        size = info.end_of_file
        handle = self._open_temp(temp, target)
        renamed = False
        try:
            hasher = new_hasher(options.checksum)
            if self.same_session and options.server_side_copy and size > len(first):
                self._server_side_copy(source, handle, size, target)
                self._hash_range(self.source, source, len(first), size, hasher, path, first)
                result.server_side = True
            else:
                self._pipe(source, handle, size, first, hasher, path)
            result.source_hash = hasher.hexdigest()
            stream_data = self._copy_streams(path, temp, streams)
            if options.verify:
                check = new_hasher(options.checksum)
                self._hash_range(destination, handle, 0, size, check, target)
                result.destination_hash = check.hexdigest()
                copied = self._read_streams(destination, temp, [(name, len(data)) for name, data in stream_data])
                if result.destination_hash != result.source_hash or copied != stream_data:
                    raise SmbFileError(STATUS_DATA_ERROR, "verify: destination bytes differ from source", target)
            # Last look at the source before anything goes under the real name: its CLOSE
            # reports size and times again. (Samba keeps reporting the write time a handle
            # saw at open while it stays open: only a look after the close sees a same-size
            # rewrite.)
            if _moved(info, self.source.close(source)):
                raise SourceChanged(path)
            if options.copy_security and descriptor is not None:
                self._set_descriptor(handle, descriptor, target)
            destination.rename(handle, target, replace=True)
            renamed = True
            destination.set_basic_info(handle, info.creation_time, info.last_access_time, info.last_write_time,
                                       0, m.wire_attributes(info.attributes))
            destination.close(handle)
        except FastPathError as exc:
            self._abandon(handle, renamed)
            raise SmbFileError(exc.status, f"write ({exc.command}) failed", target) from None
        except SmbFileError:
            self._abandon(handle, renamed)
            raise

    def _set_descriptor(self, handle: Handle, descriptor: bytes, target: str) -> None:
        """Set the source's SD on a destination handle; a refusal says how large it was
        (Samba keeps at most 2000 ACEs per ACL and about 65,370 bytes of SD; on ext4 all of
        a file's xattrs share one 4 KiB block)."""
        try:
            self.destination.set_security(handle, descriptor, self.security_information)
        except FastPathError as exc:
            raise SmbFileError(exc.status, f"the destination refused the security descriptor "
                                           f"({_descriptor_size(descriptor)})", target) from None

    def _abandon(self, handle: Handle, renamed: bool) -> None:
        """Close a failed destination handle; a file not yet renamed into place is deleted."""
        try:
            if not renamed:
                self.destination.delete_on_close(handle)
        except FastPathError:
            pass
        try:
            self.destination.close(handle, query=False)
        except FastPathError:
            pass

    def _pipe(self, source: Handle, destination: Handle, size: int, first: bytes, hasher, path: str) -> None:
        """Copy ``size`` bytes with pipelined READs and WRITEs, hashing as they pass.

        All-zero chunks are not written: the temp file is new (or truncated), so they read
        back as zeros once the end of file is set.
        """
        chunk = self.chunk
        zero = bytes(chunk)

        def pieces() -> Iterator[tuple[int, bytes]]:
            offset = 0
            for data in self._read(source, first, size, path):
                hasher.update(data)
                for start in range(0, len(data), chunk):
                    piece = data[start:start + chunk]
                    if piece != zero[:len(piece)]:
                        yield offset + start, piece
                offset += len(data)

        self.destination.write_range(destination, pieces(), depth=RANGE_DEPTH)
        if size:
            self.destination.set_end_of_file(destination, size)

    def _read(self, source: Handle, first: bytes, size: int, path: str) -> Iterator[bytes]:
        """``first`` then the rest of the source up to ``size`` bytes; a shorter file fails."""
        got = len(first)
        if first:
            yield first
        if got < size:
            for data in self.source.read_range(source, got, size - got, chunk=self.chunk, depth=RANGE_DEPTH):
                got += len(data)
                yield data
        if got != size:
            raise SmbFileError(STATUS_END_OF_FILE, "source shrank while being copied", path)

    def _hash_range(self, channel: FastChannel, handle: Handle, start: int, size: int, hasher, path: str,
                    first: bytes = b"") -> None:
        """Feed ``first`` and bytes [start, size) of an open file to ``hasher``."""
        hasher.update(first)
        got = start
        for data in channel.read_range(handle, start, size - start, chunk=self.chunk, depth=RANGE_DEPTH):
            hasher.update(data)
            got += len(data)
        if got != size:
            raise SmbFileError(STATUS_END_OF_FILE, "file shorter than expected", path)

    def _hash_destination(self, target: str, size: int) -> str:
        """Hash the first ``size`` bytes of the destination file at ``target``."""
        handle = self.destination.open(target, fp.FILE_READ_DATA | fp.FILE_READ_ATTRIBUTES | fp.SYNCHRONIZE)
        try:
            hasher = new_hasher(self.options.checksum)
            self._hash_range(self.destination, handle, 0, size, hasher, target)
            return hasher.hexdigest()
        finally:
            self.destination.close(handle)

    def _read_streams(self, channel: FastChannel, path: str, streams: list[tuple[str, int]]) -> list[tuple[str, bytes]]:
        """(":name", bytes) of each named stream of ``path``, read pipelined."""
        names = [_stream_name(name) for name, _size in streams]
        if not names:
            return []
        largest = max(size for _name, size in streams)
        found = []
        read = channel.read_small_files([path + name for name in names], max_bytes=largest, security=False,
                                        depth=8)
        for name, (_, size), item in zip(names, streams, read):
            if item.status:
                raise SmbFileError(item.status, f"read stream ({item.command}) failed", path + name)
            data = item.data
            if len(data) < item.info.end_of_file:  # larger than one READ
                handle = channel.open(path + name, fp.FILE_READ_DATA | fp.SYNCHRONIZE, options=0)
                try:
                    data += b"".join(channel.read_range(handle, len(data), item.info.end_of_file - len(data)))
                finally:
                    channel.close(handle)
            found.append((name, data))
        return found

    def _copy_streams(self, path: str, temp: str, streams: list[tuple[str, int]]) -> list[tuple[str, bytes]]:
        """Copy every named stream of the source file ``path`` onto the temp file."""
        copied = self._read_streams(self.source, path, streams)
        self._write_streams(temp, copied)
        return copied

    def _write_streams(self, path: str, streams: Iterable[tuple[str, bytes]]) -> None:
        """Create (or overwrite) each named stream (":name", bytes) of the destination ``path``."""
        destination = self.destination
        step = destination.max_write
        for name, data in streams:
            handle = destination.open(path + name, fp.FILE_WRITE_DATA | fp.SYNCHRONIZE, fp.FILE_OVERWRITE_IF,
                                      options=0)
            try:
                destination.write_range(handle, [data[i:i + step] for i in range(0, len(data), step)])
            finally:
                destination.close(handle)

    def _server_side_copy(self, source: Handle, destination: Handle, size: int, target: str) -> None:
        """Copy ``size`` bytes inside the server with FSCTL_SRV_COPYCHUNK_WRITE."""
        channel = self.destination
        resume_key = channel.ioctl(source, m.FSCTL_SRV_REQUEST_RESUME_KEY, b"", 32)[:24]
        offset = 0
        while offset < size:
            chunks = []
            while len(chunks) < COPYCHUNK_CHUNKS_PER_REQUEST and offset < size:
                length = min(COPYCHUNK_CHUNK, size - offset)
                chunks.append((offset, offset, length))
                offset += length
            output = channel.ioctl(destination, m.FSCTL_SRV_COPYCHUNK_WRITE, m.pack_copychunk(resume_key, chunks), 12)
            written, _chunk_bytes, total = m.parse_copychunk_response(output)
            if written != len(chunks) or total != sum(n for _s, _t, n in chunks):
                raise SmbFileError(STATUS_DATA_ERROR, "server-side copy wrote less than asked", target)

    # --- directories ------------------------------------------------------------------------
    def copy_directory(self, entry: FileEntry) -> FileResult:
        """Copy a directory's times, attributes, SD and streams (its files are not touched);
        skipped when all of them already match. Extra destination streams are removed."""
        try:
            return self._copy_directory(entry)
        except SmbFileError as exc:
            return _failed(entry, True, exc, self.options)

    def _copy_directory(self, entry: FileEntry) -> FileResult:
        options = self.options
        source, destination = self.source, self.destination
        path = m.smb_path(entry.path)
        target = _join(options.destination_prefix, path)
        sacl = fp.ACCESS_SYSTEM_SECURITY if options.copy_sacl else 0
        handle = source.open(path, fp.FILE_READ_ATTRIBUTES | fp.READ_CONTROL | fp.SYNCHRONIZE | sacl,
                             options=fp.FILE_DIRECTORY_FILE)
        try:
            info = handle.info
            descriptor = source.query_security(handle, self.security_information) if options.copy_security else None
            streams = source.query_streams(handle)
        finally:
            source.close(handle)
        stream_data = dict(self._read_streams(source, path, streams))
        result = _result(entry, info, Outcome.COPIED, options, directory=True, descriptor=descriptor)
        result.streams = len(streams)

        access = (fp.FILE_READ_ATTRIBUTES | fp.FILE_WRITE_ATTRIBUTES | fp.READ_CONTROL | fp.SYNCHRONIZE
                  | fp.WRITE_DAC | fp.WRITE_OWNER | sacl)
        try:
            handle = destination.open(target, access, fp.FILE_OPEN_IF, options=fp.FILE_DIRECTORY_FILE)
        except FastPathError as exc:
            if exc.status != STATUS_OBJECT_PATH_NOT_FOUND:
                raise
            self._make_parents(target)
            handle = destination.open(target, access, fp.FILE_OPEN_IF, options=fp.FILE_DIRECTORY_FILE)
        try:
            # Each part is compared and only what differs is set again: after a re-run listed
            # the directory (which moves its last-access time), one SET_INFO puts it back.
            opened = handle.create_action == FILE_OPENED
            compare = opened and options.skip_unchanged
            present = destination.query_streams(handle) if opened else []
            times_match = compare and _directory_times(handle.info) == _directory_times(info)
            security_match = (not options.copy_security or descriptor is None or (
                compare and destination.query_security(handle, self.security_information) == descriptor))
            streams_match = compare and sorted(present) == sorted(streams) \
                and dict(self._read_streams(destination, target, present)) == stream_data
            if times_match and security_match and streams_match:
                result.outcome = Outcome.SKIPPED
                return result
            if not streams_match:
                for name, _size in present:
                    if _stream_name(name) not in stream_data:
                        stream = destination.open(target + _stream_name(name), fp.DELETE, options=0)
                        destination.delete_on_close(stream)
                        destination.close(stream, query=False)
                self._write_streams(target, stream_data.items())
            if not security_match:
                self._set_descriptor(handle, descriptor, target)
            # Times last (writing a stream moves the last-write time; on NTFS setting the SD
            # moves the change time, which is sent too: Samba ignores it and reports the
            # last-write time instead).
            if not (times_match and streams_match):
                destination.set_basic_info(handle, info.creation_time, info.last_access_time, info.last_write_time,
                                           info.change_time, m.wire_attributes(info.attributes))
            return result
        finally:
            destination.close(handle)
