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
   (``~sms-<digest>.partial``; not a dot name, which Samba would report hidden), created with FILE_CREATE;
2. on the still-open handle: times and attributes (FILE_BASIC_INFORMATION), then the
   security descriptor (or the descriptor is given at CREATE, for small stream-less files
   sent as one compound), then a rename with ReplaceIfExists onto the real name, then the
   attributes once more in the same compound (Samba sets ARCHIVE on a renamed file);
3. a read-only file in the way is made writable just before the rename.

A killed copier leaves at most a ``.partial`` file, which the next run replaces.

Speed: small files (up to ``CopyOptions.compound_limit``, no streams) take two compounds:
CREATE + QUERY_INFO(security) + QUERY_INFO(streams) + READ on the source, CREATE (with
the SD) + WRITE + SET_INFO(times, attributes) + SET_INFO(rename) + CLOSE on the
destination. Large files are pipelined with several credit-capped READs and WRITEs in
flight; all-zero chunks are not sent (the end-of-file is set instead). Within one session
(same server, share and account) data is copied server-side with FSCTL_SRV_COPYCHUNK.
Every byte read from the source is hashed as it passes (checksum.py).

This module must never: normalise or case-fold a name, "repair" a time or ACL it read,
write a file under its real name before it is complete, or know about the job database.
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from common.smb import messages as m
from common.smb import metadata as md
from common.smb.checksum import DEFAULT_ALGORITHM, new_hasher
from common.smb.connection import SmbEndpoint, SmbTree, get_tree
from common.smb.errors import SmbFileError
from common.smb.walk import parse_directory_buffer

STATUS_END_OF_FILE = 0xC0000011
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_OBJECT_NAME_COLLISION = 0xC0000035
STATUS_OBJECT_PATH_NOT_FOUND = 0xC000003A
STATUS_DATA_ERROR = 0xC000003E
STATUS_FILE_IS_A_DIRECTORY = 0xC00000BA
STATUS_NO_SUCH_FILE = 0xC000000F
STATUS_NO_MORE_FILES = 0x80000006

TEMP_PREFIX = "~sms-"
TEMP_SUFFIX = ".partial"

# Attributes compared when deciding that a destination is unchanged: the ones Samba and
# NTFS both keep. NORMAL (0x80) and 0 both mean "none".
COMPARED_ATTRIBUTES = 0x01 | 0x02 | 0x04 | 0x20 | 0x10
FILE_OPENED = 1
COPYCHUNK_CHUNK = 1 << 20
COPYCHUNK_CHUNKS_PER_REQUEST = 16
# Small files in flight at once in a batch (source and destination compounds together).
PIPELINE_FILES = 8
# A destination directory holding this many of a batch's files is listed, not probed.
LISTING_MIN_FILES = 4
LISTING_OUTPUT = 65536


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


@dataclass
class _Source:
    opened: m.Opened
    descriptor: bytes | None
    streams: list[tuple[str, int]]
    first: bytes


@dataclass
class _Batch:
    source: SmbTree
    destination: SmbTree
    options: CopyOptions
    made_directories: set[str] = field(default_factory=set)

    @property
    def same_session(self) -> bool:
        return self.source is self.destination


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

    Up to PIPELINE_FILES small files are in flight at once: their source compounds are
    sent ahead, and each destination compound is sent as soon as its source answered.
    Large files, files with streams and re-checks against a recorded hash are copied one
    at a time in between.
    """
    options = options or CopyOptions()
    new_hasher(options.checksum)  # an unknown algorithm fails the batch up front
    batch = _Batch(get_tree(source), get_tree(destination), options)
    items = [_entry(item) for item in entries]
    results: dict[int, FileResult] = {}
    directories = [index for index, entry in enumerate(items) if entry.is_directory]
    files = [(index, entry) for index, entry in enumerate(items) if not entry.is_directory]
    existing = _DestinationIndex(batch, [_join(options.destination_prefix, e.path) for _i, e in files])
    waiting = iter(files)
    reading: deque = deque()  # (index, entry, pending source compound)
    writing: deque = deque()  # _SmallWrite
    more = True
    # Each small file in flight holds up to ~40 credits (a 1 MiB READ is 16): stay well inside.
    in_flight = max(1, min(PIPELINE_FILES, batch.source.credits // 96, batch.destination.credits // 96))
    while True:
        while more and len(reading) + len(writing) < in_flight:
            item = next(waiting, None)
            if item is None:
                more = False
                break
            index, entry = item
            path = m.smb_path(entry.path)
            reading.append((index, entry, batch.source.send(_source_requests(batch, path, keep_open=False))))
        if reading:
            index, entry, pending = reading.popleft()
            started = _start_file(batch, existing, entry, pending)
            if started is None:  # the source turned out to be a directory
                directories.append(index)
            elif isinstance(started, FileResult):
                results[index] = started
            else:
                started.index = index
                writing.append(started)
            if len(writing) < max(1, in_flight // 2) and (reading or more):
                continue
        if writing:
            small = writing.popleft()
            results[small.index] = _end_file(batch, small)
        elif not reading and not more:
            break
    directories.sort(key=lambda i: -m.smb_path(items[i].path).count("\\"))
    for index in directories:
        results[index] = _run(batch, items[index], directory=True)
    return [results[i] for i in range(len(items))]


@dataclass
class _SmallWrite:
    """A small file whose destination compound is on the wire."""

    entry: FileEntry
    target: str
    source: _Source
    result: FileResult
    existing: m.Opened | None
    readonly_cleared: bool
    read_back: bool
    pending: list
    index: int = -1


def _start_file(batch: _Batch, existing_files: "_DestinationIndex", entry: FileEntry, pending: list):
    """Take a pipelined source compound's answer: a result, a _SmallWrite, or None (a directory)."""
    options = batch.options
    path = m.smb_path(entry.path)
    try:
        bodies = _receive_each(batch.source, pending, path, "open source")
        _file_id, source = _parse_source(batch, path, bodies, keep_open=False)
        if source.opened.basic.attributes & m.FILE_ATTRIBUTE_DIRECTORY:
            if entry.is_directory is False:
                raise SmbFileError(STATUS_FILE_IS_A_DIRECTORY, "expected a file", path)
            return None
        target = _join(options.destination_prefix, path)
        existing = existing_files.lookup(target)
        if existing is not None and existing.basic.attributes & m.FILE_ATTRIBUTE_DIRECTORY:
            raise SmbFileError(STATUS_FILE_IS_A_DIRECTORY, "destination is a directory", target)
        if options.skip_unchanged and _unchanged(source.opened, existing):
            if not (entry.recorded_hash and options.verify):
                result = _result(entry, source.opened, Outcome.SKIPPED, options, directory=False)
                result.source_hash = entry.recorded_hash
                return result
            return _run(batch, entry, directory=False, known=source)  # re-hash the destination
        if _server_side(batch, source) or not _small_fits(batch, source):
            return _run(batch, entry, directory=False, known=source)
        result = _result(entry, source.opened, Outcome.COPIED, options, directory=False)
        result.source_hash = _digest(source.first, options.checksum)
        readonly_cleared = _make_replaceable(batch.destination, target, existing)
        read_back = options.verify and bool(source.first)
        sent = batch.destination.send(_small_requests(batch, target, source, read_back))
        return _SmallWrite(entry, target, source, result, existing, readonly_cleared, read_back, sent)
    except SmbFileError as exc:
        return _failed(entry, False, exc, options)


def _end_file(batch: _Batch, small: _SmallWrite) -> FileResult:
    """Take a pipelined destination compound's answer and finish the file."""
    tree = batch.destination
    bodies, failure = _receive_all(tree, small.pending, temp_name(small.target), "write")
    if bodies[0] is None and failure.status in (STATUS_OBJECT_NAME_COLLISION, STATUS_OBJECT_PATH_NOT_FOUND):
        # A leftover temp file or a missing directory: the one-at-a-time path repairs both.
        return _run(batch, small.entry, directory=False, known=small.source)
    try:
        _complete_small(batch, small.target, small.source, small.result, bodies, failure, small.read_back)
    except SmbFileError as exc:
        if small.readonly_cleared:
            _restore_attributes(tree, small.target, small.existing)
        return _failed(small.entry, False, exc, batch.options)
    return small.result


class _DestinationIndex:
    """What already exists on the destination, looked up by exact name.

    A directory holding at least LISTING_MIN_FILES of the batch's files is listed once
    (QUERY_DIRECTORY) instead of probing each file; a missing one is created at once.
    Other files are probed one by one.
    """

    def __init__(self, batch: _Batch, targets: list[str]):
        self.batch = batch
        counts: dict[str, int] = {}
        for target in targets:
            parent = m.smb_path(target).rpartition("\\")[0]
            counts[parent] = counts.get(parent, 0) + 1
        self.to_list = {parent for parent, count in counts.items() if count >= LISTING_MIN_FILES}
        self.listings: dict[str, dict[str, m.Opened] | None] = {}

    def lookup(self, target: str) -> m.Opened | None:
        """The destination's entry at ``target`` (None when absent)."""
        parent, _, name = m.smb_path(target).rpartition("\\")
        if parent in self.to_list:
            if parent not in self.listings:
                self.listings[parent] = self._list(parent)
            listing = self.listings[parent]
            if listing is not None:
                return listing.get(name)
        return _probe(self.batch.destination, target)

    def _list(self, directory: str) -> dict[str, m.Opened] | None:
        tree = self.batch.destination
        access = m.FILE_LIST_DIRECTORY | m.FILE_READ_ATTRIBUTES | m.SYNCHRONIZE
        bodies = _receive_each(tree, tree.send([
            m.create(directory, access, m.FILE_OPEN, m.FILE_DIRECTORY_FILE),
            m.query_directory(m.RELATED_FILE_ID, LISTING_OUTPUT),
        ]), directory, "list destination directory")
        if isinstance(bodies[0], SmbFileError):
            if bodies[0].status in (STATUS_OBJECT_NAME_NOT_FOUND, STATUS_OBJECT_PATH_NOT_FOUND):
                _make_parents(self.batch, directory + "\\-")
                return {}
            return None
        file_id = m.parse_create(bodies[0]).file_id
        found: dict[str, m.Opened] = {}
        body = bodies[1]
        try:
            while True:
                if isinstance(body, SmbFileError):
                    if body.status in (STATUS_NO_MORE_FILES, STATUS_NO_SUCH_FILE):
                        return found
                    return None
                buffer = m.parse_query_info(body)
                if not buffer:
                    return found
                for item in parse_directory_buffer(buffer, directory):
                    found[item.name] = m.Opened(
                        b"", m.BasicInfo(item.creation_time, item.last_access_time, item.last_write_time,
                                         item.change_time, item.attributes), item.size, 0)
                body = _receive_each(tree, tree.send([m.query_directory(file_id, LISTING_OUTPUT)]),
                                     directory, "list destination directory")[0]
        finally:
            _close(tree, file_id)


def copy_file(source: SmbEndpoint, destination: SmbEndpoint, path: str,
              options: CopyOptions | None = None) -> FileResult:
    """Copy one file or directory; see copy_batch."""
    return copy_batch(source, destination, [path], options)[0]


def _run(batch: _Batch, entry: FileEntry, directory: bool, known: _Source | None = None) -> FileResult | None:
    """Copy one entry on its own; ``known`` is what a pipelined open already read of it."""
    try:
        if directory:
            return _copy_directory(batch, entry)
        return _copy_file(batch, entry, known)
    except SmbFileError as exc:
        return _failed(entry, directory, exc, batch.options)


def _failed(entry: FileEntry, directory: bool, exc: SmbFileError, options: CopyOptions) -> FileResult:
    return FileResult(
        path=entry.path, is_directory=directory, outcome=Outcome.FAILED,
        hash_algorithm=options.checksum, status_name=exc.status_name,
        status_code=exc.status_hex, message=str(exc),
    )


def _result(entry: FileEntry, source: m.Opened, outcome: Outcome, options: CopyOptions,
            directory: bool) -> FileResult:
    basic = source.basic
    return FileResult(
        path=entry.path, is_directory=directory, outcome=outcome,
        size=0 if directory else source.end_of_file, creation_time=basic.creation_time,
        last_access_time=basic.last_access_time, last_write_time=basic.last_write_time,
        attributes=basic.attributes, hash_algorithm=options.checksum,
    )


# --- source side -------------------------------------------------------------------------

def _source_requests(batch: _Batch, path: str, keep_open: bool) -> list:
    """CREATE + QUERY_INFO(security) + QUERY_INFO(streams) + READ (+ CLOSE) of a source."""
    options = batch.options
    access = m.FILE_READ_DATA | m.FILE_READ_ATTRIBUTES | m.READ_CONTROL | m.SYNCHRONIZE
    if options.copy_sacl:
        access |= m.ACCESS_SYSTEM_SECURITY
    requests = [m.create(path, access, m.FILE_OPEN, 0)]
    if options.copy_security:
        requests.append(m.query_info(m.RELATED_FILE_ID, m.INFO_SECURITY, 0,
                                     additional=md.security_information(options.copy_sacl)))
    requests.append(m.query_info(m.RELATED_FILE_ID, m.INFO_FILE, m.FILE_STREAM_INFORMATION))
    requests.append(m.read(m.RELATED_FILE_ID, 0, min(options.compound_limit, batch.source.max_read)))
    if not keep_open:
        requests.append(m.close(m.RELATED_FILE_ID))
    return requests


def _parse_source(batch: _Batch, path: str, bodies: list, keep_open: bool) -> tuple[bytes, _Source]:
    """The source's metadata and first bytes from the responses to _source_requests."""
    if not keep_open:
        bodies = bodies[:-1]  # the CLOSE: nothing to learn from it
    if isinstance(bodies[0], SmbFileError):
        raise bodies[0]
    opened = m.parse_create(bodies[0])
    is_directory = bool(opened.basic.attributes & m.FILE_ATTRIBUTE_DIRECTORY)
    try:
        descriptor = None
        if batch.options.copy_security:
            if isinstance(bodies[1], SmbFileError):
                raise bodies[1]
            descriptor = m.parse_query_info(bodies[1])
        streams = _stream_list(bodies[-2])
        read_body = bodies[-1]
        if isinstance(read_body, SmbFileError):
            if not is_directory and (opened.end_of_file or read_body.status != STATUS_END_OF_FILE):
                raise read_body
            read_body = None
    except SmbFileError:
        if keep_open:
            _close(batch.source, opened.file_id)
        raise
    first = m.parse_read(read_body)[:opened.end_of_file] if read_body else b""
    return opened.file_id, _Source(opened, descriptor, streams, first)


def _open_source(batch: _Batch, path: str) -> tuple[bytes, _Source]:
    """Open the source and, in the same compound, read its SD, stream list and first bytes.

    The handle stays open (the caller closes it); returns (file id, what was read).
    """
    tree = batch.source
    bodies = _receive_each(tree, tree.send(_source_requests(batch, path, keep_open=True)), path, "open source")
    return _parse_source(batch, path, bodies, keep_open=True)


def _close(tree: SmbTree, file_id: bytes) -> None:
    tree.drain(tree.send([m.close(file_id)]))


def _probe(tree: SmbTree, path: str) -> m.Opened | None:
    try:
        return md.stat(tree, path)
    except SmbFileError as exc:
        if exc.status in (STATUS_OBJECT_NAME_NOT_FOUND, STATUS_OBJECT_PATH_NOT_FOUND):
            return None
        raise


# --- files ---------------------------------------------------------------------------------

def _copy_file(batch: _Batch, entry: FileEntry, known: _Source | None = None) -> FileResult | None:
    options = batch.options
    path = m.smb_path(entry.path)
    source_id, source = _open_source(batch, path)
    if known is not None and (known.opened.end_of_file, known.opened.basic.last_write_time) == \
            (source.opened.end_of_file, source.opened.basic.last_write_time):
        # The earlier read moved the last-access time (relatime): keep the one seen before it.
        source.opened = known.opened
    if source.opened.basic.attributes & m.FILE_ATTRIBUTE_DIRECTORY:
        _close(batch.source, source_id)
        if entry.is_directory is False:
            raise SmbFileError(STATUS_FILE_IS_A_DIRECTORY, "expected a file", path)
        return None
    try:
        target = _join(options.destination_prefix, path)
        existing = _probe(batch.destination, target)
        if existing is not None and existing.basic.attributes & m.FILE_ATTRIBUTE_DIRECTORY:
            raise SmbFileError(STATUS_FILE_IS_A_DIRECTORY, "destination is a directory", target)
        if options.skip_unchanged and _unchanged(source.opened, existing):
            destination_hash = None
            if entry.recorded_hash and options.verify:
                destination_hash = _hash_path(batch.destination, target, existing.end_of_file, options.checksum)
            if destination_hash is None or destination_hash == entry.recorded_hash:
                result = _result(entry, source.opened, Outcome.SKIPPED, options, directory=False)
                result.source_hash = entry.recorded_hash
                result.destination_hash = destination_hash
                return result
        result = _result(entry, source.opened, Outcome.COPIED, options, directory=False)
        result.streams = len(source.streams)
        server_side = _server_side(batch, source)
        readonly_cleared = _make_replaceable(batch.destination, target, existing)
        try:
            if not server_side and _small_fits(batch, source):
                _write_small(batch, target, source, result)
            else:
                _write_large(batch, path, target, source_id, source, result, server_side)
        except SmbFileError:
            if readonly_cleared:
                _restore_attributes(batch.destination, target, existing)
            raise
        return result
    finally:
        _close(batch.source, source_id)


def _unchanged(source: m.Opened, existing: m.Opened | None) -> bool:
    return (
        existing is not None
        and existing.end_of_file == source.end_of_file
        and existing.basic.last_write_time == source.basic.last_write_time
        and _compared(existing.basic.attributes) == _compared(source.basic.attributes)
    )


def _make_replaceable(tree: SmbTree, target: str, existing: m.Opened | None) -> bool:
    """Clear READONLY on a destination file about to be replaced; True if it was set."""
    if existing is None or not existing.basic.attributes & m.FILE_ATTRIBUTE_READONLY:
        return False
    md.set_basic(tree, target, attributes=existing.basic.attributes & ~m.FILE_ATTRIBUTE_READONLY)
    return True


def _restore_attributes(tree: SmbTree, target: str, existing: m.Opened) -> None:
    try:
        md.set_basic(tree, target, attributes=existing.basic.attributes)
    except SmbFileError:
        pass


def _basic_buffer(opened: m.Opened) -> bytes:
    basic = opened.basic
    return m.pack_basic(basic.creation_time, basic.last_access_time, basic.last_write_time, 0,
                        m.wire_attributes(basic.attributes))


def _destination_access(options: CopyOptions) -> int:
    access = (m.FILE_READ_DATA | m.FILE_WRITE_DATA | m.FILE_READ_ATTRIBUTES | m.FILE_WRITE_ATTRIBUTES
              | m.DELETE | m.READ_CONTROL | m.SYNCHRONIZE)
    if options.copy_security:
        access |= m.WRITE_DAC | m.WRITE_OWNER
    if options.copy_sacl:
        access |= m.ACCESS_SYSTEM_SECURITY
    return access


def _small_requests(batch: _Batch, target: str, source: _Source, read_back: bool) -> list:
    """CREATE temp (with SD) + WRITE, then READ back (verify) or metadata + rename + CLOSE."""
    options = batch.options
    data = source.first
    descriptor = source.descriptor if options.copy_security else None
    requests = [m.create(temp_name(target), _destination_access(options), m.FILE_CREATE,
                         m.FILE_NON_DIRECTORY_FILE, security_descriptor=descriptor)]
    if data:
        requests.append(m.write(m.RELATED_FILE_ID, 0, data))
    if read_back:
        requests.append(m.read(m.RELATED_FILE_ID, 0, len(data)))
    return requests


def _server_side(batch: _Batch, source: _Source) -> bool:
    """True when the data is better copied inside the server: same session, and more of
    it than the first read already brought over."""
    return (batch.options.server_side_copy and batch.same_session
            and source.opened.end_of_file > len(source.first))


def _small_fits(batch: _Batch, source: _Source) -> bool:
    """True when a file can be written in one destination compound."""
    size = source.opened.end_of_file
    return (not source.streams and len(source.first) == size
            and size <= min(batch.options.compound_limit, batch.destination.max_write))


def _complete_small(batch: _Batch, target: str, source: _Source, result: FileResult,
                    bodies: list, failure: SmbFileError | None, read_back: bool) -> None:
    """Check the responses of _small_requests; verify and finish when it read back."""
    options = batch.options
    tree = batch.destination
    temp = temp_name(target)
    if bodies[0] is None:
        raise failure
    file_id = m.parse_create(bodies[0]).file_id
    if failure is not None:
        _discard_temp(tree, file_id, temp)
        raise failure
    data = source.first
    if options.verify and not data:
        result.destination_hash = _digest(b"", options.checksum)
    if read_back:
        echoed = m.parse_read(bodies[2])
        result.destination_hash = _digest(echoed, options.checksum)
        if echoed != data:
            _discard_temp(tree, file_id, temp)
            raise SmbFileError(STATUS_DATA_ERROR, "verify: destination bytes differ from source", target)
    _finish(batch, file_id, temp, target, source, with_descriptor=False)


def _write_small(batch: _Batch, target: str, source: _Source, result: FileResult) -> None:
    """One compound: CREATE temp (with SD) + WRITE [+ READ back] + SET_INFO + rename + CLOSE."""
    tree = batch.destination
    result.source_hash = _digest(source.first, batch.options.checksum)
    read_back = batch.options.verify and bool(source.first)

    def send():
        requests = _small_requests(batch, target, source, read_back)
        return _receive_all(tree, tree.send(requests), temp_name(target), "write")

    bodies, failure = _with_temp_retries(batch, temp_name(target), target, send)
    _complete_small(batch, target, source, result, bodies, failure, read_back)


def _write_large(batch: _Batch, path: str, target: str, source_id: bytes, source: _Source,
                 result: FileResult, server_side: bool) -> None:
    """Temp file, pipelined (or server-side) data, streams, [verify], then metadata + rename."""
    options = batch.options
    tree = batch.destination
    temp = temp_name(target)
    size = source.opened.end_of_file

    def send():
        requests = [m.create(temp, _destination_access(options), m.FILE_CREATE, m.FILE_NON_DIRECTORY_FILE)]
        return _receive_all(tree, tree.send(requests), temp, "create temporary file")

    bodies, failure = _with_temp_retries(batch, temp, target, send)
    if failure is not None:
        raise failure
    file_id = m.parse_create(bodies[0]).file_id
    try:
        hasher = new_hasher(options.checksum)
        if server_side:
            _server_side_copy(tree, source_id, file_id, size, path)
            hasher.update(source.first)
            _hash_handle(batch.source, source_id, size, hasher, path, start=len(source.first))
            result.server_side = True
        else:
            _pipe(batch, source_id, file_id, size, source.first, hasher, path, temp)
        result.source_hash = hasher.hexdigest()
        stream_data = []
        for name, _size in source.streams:
            data = md.read_file(batch.source, path + name)
            _write_whole(tree, temp + name, data)
            stream_data.append((name, data))
        if options.verify:
            check = new_hasher(options.checksum)
            _hash_handle(tree, file_id, size, check, temp)
            result.destination_hash = check.hexdigest()
            if result.destination_hash != result.source_hash or any(
                    md.read_file(tree, temp + name) != data for name, data in stream_data):
                raise SmbFileError(STATUS_DATA_ERROR, "verify: destination bytes differ from source", target)
        _finish(batch, file_id, temp, target, source, with_descriptor=options.copy_security)
    except SmbFileError:
        _discard_temp(tree, file_id, temp)
        raise


def _finish(batch: _Batch, file_id: bytes, temp: str, target: str, source: _Source,
            with_descriptor: bool) -> None:
    """On the open temp handle: times + attributes, then the SD, then rename, then CLOSE."""
    tree = batch.destination
    descriptor = source.descriptor if with_descriptor else None
    requests = _metadata_requests(file_id, target, source, descriptor, batch.options.copy_sacl)
    _bodies, failure = _receive_all(tree, tree.send(requests, related=False), target, "apply metadata and rename")
    if failure is not None:
        _discard_temp(tree, file_id, temp)
        raise failure
    _close(tree, file_id)


def _metadata_requests(file_id: bytes, target: str, source: _Source, descriptor: bytes | None,
                       include_sacl: bool = False) -> list:
    """SET_INFO times + attributes, [SD], rename onto ``target``, attributes again.

    Samba sets ARCHIVE on every renamed file, so the attributes are set once more after
    the rename, in the same compound: the server runs it whole, a dying client cannot
    stop it half-way.
    """
    requests = [m.set_info(file_id, m.INFO_FILE, m.FILE_BASIC_INFORMATION, _basic_buffer(source.opened))]
    if descriptor is not None:
        requests.append(m.set_info(file_id, m.INFO_SECURITY, 0, descriptor,
                                   additional=md.security_information(include_sacl)))
    requests.append(m.set_info(file_id, m.INFO_FILE, m.FILE_RENAME_INFORMATION, m.pack_rename(target, True)))
    requests.append(m.set_info(file_id, m.INFO_FILE, m.FILE_BASIC_INFORMATION,
                               m.pack_basic(0, 0, 0, 0, m.wire_attributes(source.opened.basic.attributes))))
    return requests


def _receive_each(tree: SmbTree, pending: list, path: str, action: str) -> list:
    """Each response body, or the SmbFileError it failed with, in request order."""
    found = []
    for request in pending:
        try:
            found.append(tree.receive(request, path, action))
        except SmbFileError as exc:
            found.append(exc)
    return found


def _stream_list(body) -> list[tuple[str, int]]:
    """Named streams from a FILE_STREAM_INFORMATION response (or its failure).

    Samba answers STATUS_END_OF_FILE for a directory without streams: that is "none".
    """
    if isinstance(body, SmbFileError):
        if body.status == STATUS_END_OF_FILE:
            return []
        raise body
    return md.named_streams(m.parse_streams(m.parse_query_info(body)))


def _receive_all(tree: SmbTree, pending: list, path: str, action: str):
    bodies, failure = [], None
    for request in pending:
        try:
            bodies.append(tree.receive(request, path, action))
        except SmbFileError as exc:
            bodies.append(None)
            failure = failure or exc
    return bodies, failure


def _with_temp_retries(batch: _Batch, temp: str, target: str, send):
    """Run ``send`` (whose first request creates ``temp``); on a leftover temp file remove it,
    on a missing parent directory create it, and try again once each."""
    retried = set()
    while True:
        bodies, failure = send()
        if bodies[0] is not None or failure is None:
            return bodies, failure
        if failure.status == STATUS_OBJECT_NAME_COLLISION and "collision" not in retried:
            retried.add("collision")
            _remove_file(batch.destination, temp)
        elif failure.status == STATUS_OBJECT_PATH_NOT_FOUND and "parents" not in retried:
            retried.add("parents")
            _make_parents(batch, target)
        else:
            raise failure


def _discard_temp(tree: SmbTree, file_id: bytes, temp: str) -> None:
    """Close a temp handle (if still open) and delete the temp file; errors are ignored."""
    _close(tree, file_id)
    try:
        _remove_file(tree, temp)
    except SmbFileError:
        pass


def _remove_file(tree: SmbTree, path: str) -> None:
    """Delete a file even if it is read-only (missing is fine)."""
    try:
        md.compound(tree, path, [
            m.create(path, m.DELETE | m.FILE_WRITE_ATTRIBUTES, m.FILE_OPEN, m.FILE_NON_DIRECTORY_FILE),
            m.set_info(m.RELATED_FILE_ID, m.INFO_FILE, m.FILE_BASIC_INFORMATION,
                       m.pack_basic(0, 0, 0, 0, m.FILE_ATTRIBUTE_NORMAL)),
            m.set_info(m.RELATED_FILE_ID, m.INFO_FILE, m.FILE_DISPOSITION_INFORMATION, m.pack_delete_on_close()),
            m.close(m.RELATED_FILE_ID),
        ], "remove")
    except SmbFileError as exc:
        if exc.status not in (STATUS_OBJECT_NAME_NOT_FOUND, STATUS_OBJECT_PATH_NOT_FOUND):
            raise


def _make_parents(batch: _Batch, target: str) -> None:
    """Create every missing directory above ``target`` on the destination."""
    parts = m.smb_path(target).split("\\")[:-1]
    for depth in range(1, len(parts) + 1):
        directory = "\\".join(parts[:depth])
        if directory in batch.made_directories:
            continue
        md.compound(batch.destination, directory, [
            m.create(directory, m.FILE_READ_ATTRIBUTES, m.FILE_OPEN_IF, m.FILE_DIRECTORY_FILE),
            m.close(m.RELATED_FILE_ID),
        ], "create directory")
        batch.made_directories.add(directory)


def _write_whole(tree: SmbTree, path: str, data: bytes) -> None:
    """Create (or overwrite) ``path`` - a stream such as "dir\\f:tag" - holding ``data``."""
    handle = tree.send([m.create(path, m.FILE_WRITE_DATA | m.SYNCHRONIZE, m.FILE_OVERWRITE_IF, 0)])[0]
    file_id = m.parse_create(tree.receive(handle, path, "create stream")).file_id
    try:
        pending = [tree.send([m.write(file_id, offset, data[offset:offset + tree.max_write])])[0]
                   for offset in range(0, len(data), tree.max_write)]
        _bodies, failure = _receive_all(tree, pending, path, "write stream")
        if failure is not None:
            raise failure
    finally:
        _close(tree, file_id)


def _digest(data: bytes, algorithm: str) -> str:
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return hasher.hexdigest()


def _window(*trees: SmbTree) -> int:
    window = min(tree.max_in_flight for tree in trees)
    return max(1, window // 2) if len(trees) == 2 and trees[0] is trees[1] else window


def _pipe(batch: _Batch, source_id: bytes, destination_id: bytes, size: int, first: bytes,
          hasher, path: str, temp: str) -> None:
    """Copy ``size`` bytes with several READs and WRITEs in flight, hashing what is read.

    All-zero chunks are not written: the temp file is new, so they read back as zeros once
    the end-of-file is set.
    """
    source, destination = batch.source, batch.destination
    chunk = min(source.max_read, destination.max_write)
    window = _window(source, destination)
    zero = bytes(chunk)
    reads: deque = deque()
    writes: deque = deque()

    def write_out(offset: int, data: bytes) -> None:
        for start in range(0, len(data), chunk):
            piece = data[start:start + chunk]
            if piece == zero or (len(piece) < chunk and piece.count(0) == len(piece)):
                continue
            writes.append(destination.send([m.write(destination_id, offset + start, piece)])[0])
            while len(writes) > window:
                destination.receive(writes.popleft(), temp, "write")

    try:
        hasher.update(first)
        write_out(0, first)
        next_offset = len(first)
        while next_offset < size or reads:
            while len(reads) < window and next_offset < size:
                length = min(chunk, size - next_offset)
                reads.append((next_offset, length, source.send([m.read(source_id, next_offset, length)])[0]))
                next_offset += length
            offset, length, request = reads.popleft()
            data = m.parse_read(source.receive(request, path, "read"))
            if len(data) != length:
                raise SmbFileError(STATUS_END_OF_FILE, "source shrank while being copied", path)
            hasher.update(data)
            write_out(offset, data)
        while writes:
            destination.receive(writes.popleft(), temp, "write")
    except SmbFileError:
        source.drain([request for _o, _l, request in reads])
        destination.drain(list(writes))
        raise
    if size:
        md.compound(destination, temp, [
            m.set_info(destination_id, m.INFO_FILE, m.FILE_END_OF_FILE_INFORMATION, m.pack_end_of_file(size)),
        ], "set end of file")


def _hash_handle(tree: SmbTree, file_id: bytes, size: int, hasher, path: str, start: int = 0) -> None:
    """Feed bytes [start, size) of an open file to ``hasher`` with pipelined READs."""
    window = tree.max_in_flight
    reads: deque = deque()
    next_offset = start
    try:
        while next_offset < size or reads:
            while len(reads) < window and next_offset < size:
                length = min(tree.max_read, size - next_offset)
                reads.append((length, tree.send([m.read(file_id, next_offset, length)])[0]))
                next_offset += length
            length, request = reads.popleft()
            data = m.parse_read(tree.receive(request, path, "read"))
            if len(data) != length:
                raise SmbFileError(STATUS_END_OF_FILE, "file shorter than expected", path)
            hasher.update(data)
    except SmbFileError:
        tree.drain([request for _l, request in reads])
        raise


def _hash_path(tree: SmbTree, path: str, size: int, algorithm: str) -> str:
    """Hash the first ``size`` bytes of the file at ``path``."""
    handle = tree.send([m.create(path, m.FILE_READ_DATA | m.SYNCHRONIZE, m.FILE_OPEN, m.FILE_NON_DIRECTORY_FILE)])[0]
    file_id = m.parse_create(tree.receive(handle, path, "open for hashing")).file_id
    try:
        hasher = new_hasher(algorithm)
        _hash_handle(tree, file_id, size, hasher, path)
        return hasher.hexdigest()
    finally:
        _close(tree, file_id)


def _server_side_copy(tree: SmbTree, source_id: bytes, destination_id: bytes, size: int, path: str) -> None:
    """Copy ``size`` bytes inside the server with FSCTL_SRV_COPYCHUNK_WRITE."""
    body = tree.receive(tree.send([m.ioctl(source_id, m.FSCTL_SRV_REQUEST_RESUME_KEY, b"", 32)])[0],
                        path, "request resume key")
    resume_key = m.parse_ioctl_output(body)[:24]
    offset = 0
    while offset < size:
        chunks = []
        while len(chunks) < COPYCHUNK_CHUNKS_PER_REQUEST and offset < size:
            length = min(COPYCHUNK_CHUNK, size - offset)
            chunks.append((offset, offset, length))
            offset += length
        request = tree.send([m.ioctl(destination_id, m.FSCTL_SRV_COPYCHUNK_WRITE,
                                     m.pack_copychunk(resume_key, chunks), 12)])[0]
        written, _chunk_bytes, total = m.parse_copychunk_response(
            m.parse_ioctl_output(tree.receive(request, path, "server-side copy")))
        if written != len(chunks) or total != sum(n for _s, _t, n in chunks):
            raise SmbFileError(STATUS_DATA_ERROR, "server-side copy wrote less than asked", path)


# --- directories ---------------------------------------------------------------------------

def _copy_directory(batch: _Batch, entry: FileEntry) -> FileResult:
    options = batch.options
    path = m.smb_path(entry.path)
    target = _join(options.destination_prefix, path)
    read_access = m.FILE_READ_ATTRIBUTES | m.READ_CONTROL | (m.ACCESS_SYSTEM_SECURITY if options.copy_sacl else 0)
    sd_query = m.query_info(m.RELATED_FILE_ID, m.INFO_SECURITY, 0,
                            additional=md.security_information(options.copy_sacl))
    streams_query = m.query_info(m.RELATED_FILE_ID, m.INFO_FILE, m.FILE_STREAM_INFORMATION)
    pending = batch.source.send([
        m.create(path, read_access, m.FILE_OPEN, m.FILE_DIRECTORY_FILE), sd_query, streams_query,
        m.close(m.RELATED_FILE_ID),
    ])
    bodies = _receive_each(batch.source, pending, path, "read directory metadata")
    for body in bodies[:2]:
        if isinstance(body, SmbFileError):
            raise body
    opened = m.parse_create(bodies[0])
    descriptor = m.parse_query_info(bodies[1])
    streams = _stream_list(bodies[2])
    result = _result(entry, opened, Outcome.COPIED, options, directory=True)
    result.streams = len(streams)

    write_access = (m.FILE_READ_ATTRIBUTES | m.FILE_WRITE_ATTRIBUTES | m.READ_CONTROL | m.SYNCHRONIZE
                    | m.WRITE_DAC | m.WRITE_OWNER | (m.ACCESS_SYSTEM_SECURITY if options.copy_sacl else 0))

    def open_destination():
        pending = batch.destination.send([
            m.create(target, write_access, m.FILE_OPEN_IF, m.FILE_DIRECTORY_FILE), sd_query, streams_query,
        ])
        return _receive_each(batch.destination, pending, target, "open destination directory")

    dest_bodies = open_destination()
    if isinstance(dest_bodies[0], SmbFileError) and dest_bodies[0].status == STATUS_OBJECT_PATH_NOT_FOUND:
        _make_parents(batch, target)
        dest_bodies = open_destination()
    if isinstance(dest_bodies[0], SmbFileError):
        raise dest_bodies[0]
    dest = m.parse_create(dest_bodies[0])
    tree = batch.destination
    try:
        if isinstance(dest_bodies[1], SmbFileError):
            raise dest_bodies[1]
        dest_descriptor = m.parse_query_info(dest_bodies[1])
        dest_streams = _stream_list(dest_bodies[2])
        stream_data = {name: md.read_file(batch.source, path + name) for name, _size in streams}
        same = (
            options.skip_unchanged and dest.create_action == FILE_OPENED
            and dest.basic.creation_time == opened.basic.creation_time
            and dest.basic.last_write_time == opened.basic.last_write_time
            and _compared(dest.basic.attributes) == _compared(opened.basic.attributes)
            and (not options.copy_security or dest_descriptor == descriptor)
            and sorted(dest_streams) == sorted(streams)
            and all(md.read_file(tree, target + name) == data for name, data in stream_data.items())
        )
        if same:
            result.outcome = Outcome.SKIPPED
            return result
        for name, _size in dest_streams:
            if name not in stream_data:
                _remove_stream(tree, target + name)
        for name, data in stream_data.items():
            _write_whole(tree, target + name, data)
        requests = [m.set_info(dest.file_id, m.INFO_FILE, m.FILE_BASIC_INFORMATION, _basic_buffer(opened))]
        if options.copy_security:
            requests.append(m.set_info(dest.file_id, m.INFO_SECURITY, 0, descriptor,
                                       additional=md.security_information(options.copy_sacl)))
        _bodies, failure = _receive_all(tree, tree.send(requests, related=False), target, "apply directory metadata")
        if failure is not None:
            raise failure
        return result
    finally:
        _close(tree, dest.file_id)


def _remove_stream(tree: SmbTree, path: str) -> None:
    md.compound(tree, path, [
        m.create(path, m.DELETE, m.FILE_OPEN, 0),
        m.set_info(m.RELATED_FILE_ID, m.INFO_FILE, m.FILE_DISPOSITION_INFORMATION, m.pack_delete_on_close()),
        m.close(m.RELATED_FILE_ID),
    ], "remove stream")
