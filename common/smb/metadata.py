"""Exact file metadata over SMB: raw FILETIMEs, attributes, security descriptors, streams.

Times are raw 64-bit FILETIME integers (100 ns since 1601), never datetimes, which drop
the last digit. Attributes follow FILE_BASIC_INFORMATION's rule: 0 means "unchanged", so
"no attribute" is written as FILE_ATTRIBUTE_NORMAL. Security descriptors are opaque
self-relative bytes (owner | group | DACL, plus SACL only when asked), set back exactly
as read: ACE order, protected and inheritance flags are the bytes' business.

Every function here opens, acts and closes in one compound request. None of them ever
changes data, and none ever "fixes" a time or an ACL it read.
"""

from __future__ import annotations

from common.smb import messages as m
from common.smb.connection import SmbTree
from common.smb.errors import SmbFileError

STATUS_END_OF_FILE = 0xC0000011

Opened = m.Opened
BasicInfo = m.BasicInfo


def security_information(include_sacl: bool) -> int:
    """The SECURITY_INFORMATION flags we copy: owner, group, DACL (+ SACL when asked)."""
    flags = m.OWNER_SECURITY_INFORMATION | m.GROUP_SECURITY_INFORMATION | m.DACL_SECURITY_INFORMATION
    return flags | (m.SACL_SECURITY_INFORMATION if include_sacl else 0)


def security_access(include_sacl: bool, write: bool) -> int:
    """The access mask needed to read (or write) the SD parts we copy."""
    if write:
        access = m.WRITE_DAC | m.WRITE_OWNER
    else:
        access = m.READ_CONTROL
    return access | (m.ACCESS_SYSTEM_SECURITY if include_sacl else 0)


def compound(tree: SmbTree, path: str, requests: list, action: str) -> list[bytes]:
    """Send ``requests`` as one related compound and return every response body.

    Every response is read even when one fails; then the first failure is raised as an
    SmbFileError about ``path``.
    """
    pending = tree.send(requests, related=True)
    bodies: list[bytes] = []
    failure: SmbFileError | None = None
    for request in pending:
        try:
            bodies.append(tree.receive(request, path, action))
        except SmbFileError as exc:
            failure = failure or exc
            bodies.append(b"")
    if failure is not None:
        raise failure
    return bodies


def _open_flags(directory: bool | None) -> int:
    if directory is None:
        return m.FILE_OPEN_REPARSE_POINT
    return m.FILE_OPEN_REPARSE_POINT | (m.FILE_DIRECTORY_FILE if directory else m.FILE_NON_DIRECTORY_FILE)


def stat(tree: SmbTree, path: str) -> Opened:
    """Raw times, attributes and size of ``path`` (file or directory), without reading it."""
    bodies = compound(tree, path, [
        m.create(path, m.FILE_READ_ATTRIBUTES, m.FILE_OPEN, _open_flags(None)),
        m.close(m.RELATED_FILE_ID),
    ], "stat")
    return m.parse_create(bodies[0])


def query_basic(tree: SmbTree, path: str) -> BasicInfo:
    """FILE_BASIC_INFORMATION of ``path`` with raw FILETIMEs (incl. change time)."""
    bodies = compound(tree, path, [
        m.create(path, m.FILE_READ_ATTRIBUTES, m.FILE_OPEN, _open_flags(None)),
        m.query_info(m.RELATED_FILE_ID, m.INFO_FILE, m.FILE_BASIC_INFORMATION, output_length=40),
        m.close(m.RELATED_FILE_ID),
    ], "query basic information")
    return m.unpack_basic(m.parse_query_info(bodies[1]))


def set_basic(tree: SmbTree, path: str, *, creation: int = 0, last_access: int = 0,
              last_write: int = 0, change: int = 0, attributes: int | None = None) -> None:
    """Set times (0 = leave unchanged) and attributes (None = unchanged, 0 = NORMAL)."""
    wire = 0 if attributes is None else m.wire_attributes(attributes)
    compound(tree, path, [
        m.create(path, m.FILE_WRITE_ATTRIBUTES, m.FILE_OPEN, _open_flags(None)),
        m.set_info(m.RELATED_FILE_ID, m.INFO_FILE, m.FILE_BASIC_INFORMATION,
                   m.pack_basic(creation, last_access, last_write, change, wire)),
        m.close(m.RELATED_FILE_ID),
    ], "set basic information")


def query_security(tree: SmbTree, path: str, include_sacl: bool = False) -> bytes:
    """The self-relative security descriptor of ``path`` as raw bytes."""
    bodies = compound(tree, path, [
        m.create(path, security_access(include_sacl, write=False), m.FILE_OPEN, _open_flags(None)),
        m.query_info(m.RELATED_FILE_ID, m.INFO_SECURITY, 0, additional=security_information(include_sacl)),
        m.close(m.RELATED_FILE_ID),
    ], "query security descriptor")
    return m.parse_query_info(bodies[1])


def set_security(tree: SmbTree, path: str, descriptor: bytes, include_sacl: bool = False) -> None:
    """Set ``path``'s owner, group, DACL (and SACL) from raw descriptor bytes."""
    compound(tree, path, [
        m.create(path, security_access(include_sacl, write=True), m.FILE_OPEN, _open_flags(None)),
        m.set_info(m.RELATED_FILE_ID, m.INFO_SECURITY, 0, descriptor,
                   additional=security_information(include_sacl)),
        m.close(m.RELATED_FILE_ID),
    ], "set security descriptor")


def named_streams(stream_information: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The alternate data streams of a FILE_STREAM_INFORMATION list, as (":name", size).

    The unnamed data stream ("::$DATA") is left out; the ":$DATA" suffix is dropped.
    """
    named = []
    for name, size in stream_information:
        if name == "::$DATA":
            continue
        if name.endswith(":$DATA"):
            name = name[: -len(":$DATA")]
        named.append((name, size))
    return named


def list_streams(tree: SmbTree, path: str) -> list[tuple[str, int]]:
    """Alternate data streams of a file or directory, as (":name", size) pairs."""
    try:
        bodies = compound(tree, path, [
            m.create(path, m.FILE_READ_ATTRIBUTES, m.FILE_OPEN, _open_flags(None)),
            m.query_info(m.RELATED_FILE_ID, m.INFO_FILE, m.FILE_STREAM_INFORMATION),
            m.close(m.RELATED_FILE_ID),
        ], "list streams")
    except SmbFileError as exc:
        if exc.status == STATUS_END_OF_FILE:  # Samba: a directory without streams
            return []
        raise
    return named_streams(m.parse_streams(m.parse_query_info(bodies[1])))


def read_file(tree: SmbTree, path: str) -> bytes:
    """All bytes of a file or of a stream ("dir\\name:stream"); meant for small objects."""
    handle = tree.send([m.create(path, m.FILE_READ_DATA | m.FILE_READ_ATTRIBUTES, m.FILE_OPEN, 0)])[0]
    opened = m.parse_create(tree.receive(handle, path, "open for reading"))
    file_id = opened.file_id
    chunks = []
    try:
        offset = 0
        while offset < opened.end_of_file:
            length = min(tree.max_read, opened.end_of_file - offset)
            request = tree.send([m.read(file_id, offset, length)])[0]
            chunk = m.parse_read(tree.receive(request, path, "read"))
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
    finally:
        tree.drain(tree.send([m.close(file_id)]))
    return b"".join(chunks)
