"""Stream the entries of a share (or a directory in it) from SMB2 QUERY_DIRECTORY.

``ShareWalker`` walks a tree depth first with an explicit stack of directory paths and
yields one ``DirEntry`` per file or directory as each QUERY_DIRECTORY response arrives:
name, share-relative path, size, the four times as raw 64-bit FILETIME integers (exact
to 100 ns, unlike smbprotocol's datetimes), attributes and the server's file id. A
directory that cannot be opened or listed is recorded in ``walker.errors`` (NTSTATUS
name and path) and the walk goes on with the rest of the share.

It must never hold a share's listing in memory (only the stack of directories still to
visit), never follow a reparse point into another place, and never write to the share.
A broken transport ends the walk with ``SmbFileError``: every later directory would fail
the same way, so it is not recorded as a per-directory error.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from smbprotocol.exceptions import SMBException, SMBResponseException
from smbprotocol.file_info import FileAttributes, FileInformationClass
from smbprotocol.header import NtStatus
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    DirectoryAccessMask,
    ImpersonationLevel,
    Open,
    ShareAccess,
    SMB2QueryDirectoryResponse,
)
from smbprotocol.tree import TreeConnect

from common.smb.errors import from_smbprotocol, status_name

# FileIdFullDirectoryInformation (MS-FSCC 2.4.18): next offset, file index, creation,
# last-access, last-write, change time, end of file, allocation size, attributes, name
# length, EA size (or reparse tag), reserved, file id; the UTF-16 name follows.
_ENTRY = struct.Struct("<IIQQQQqqIIIIQ")
_STATUS_DONE = (NtStatus.STATUS_NO_MORE_FILES, NtStatus.STATUS_NO_SUCH_FILE)
# One credit covers 64 KiB of QUERY_DIRECTORY output (MS-SMB2 3.1.5.2).
_CREDIT_UNIT = 65536
_MAX_OUTPUT = 1 << 20


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One file or directory as QUERY_DIRECTORY reported it.

    ``path`` is relative to the share root, with backslashes (``dir\\sub\\file.txt``).
    Times are raw FILETIME integers (100 ns ticks since 1601-01-01 UTC).
    ``ea_size`` holds the reparse tag instead when the entry is a reparse point.
    """

    name: str
    path: str
    size: int
    allocation_size: int
    creation_time: int
    last_access_time: int
    last_write_time: int
    change_time: int
    attributes: int
    file_id: int
    ea_size: int

    @property
    def is_dir(self) -> bool:
        """True for a directory."""
        return bool(self.attributes & FileAttributes.FILE_ATTRIBUTE_DIRECTORY)

    @property
    def is_reparse_point(self) -> bool:
        """True for a reparse point (symbolic link, junction ...), which is never entered."""
        return bool(self.attributes & FileAttributes.FILE_ATTRIBUTE_REPARSE_POINT)


@dataclass(frozen=True, slots=True)
class WalkError:
    """A directory the walk could not open or list completely."""

    path: str
    status: int
    status_name: str
    message: str


def join(parent: str, name: str) -> str:
    """The share-relative path of ``name`` inside ``parent`` ('' is the share root)."""
    return f"{parent}\\{name}" if parent else name


def parse_directory_buffer(buffer: bytes, parent: str) -> Iterator[DirEntry]:
    """Decode a FileIdFullDirectoryInformation buffer, skipping '.' and '..'."""
    offset = 0
    view = memoryview(buffer)
    while True:
        (next_offset, _index, creation, access, write, change, eof, allocation, attributes,
         name_length, ea_size, _reserved, file_id) = _ENTRY.unpack_from(view, offset)
        start = offset + _ENTRY.size
        name = bytes(view[start:start + name_length]).decode("utf-16-le", "surrogatepass")
        if name not in (".", ".."):
            yield DirEntry(name, join(parent, name), eof, allocation, creation, access, write,
                           change, attributes, file_id, ea_size)
        if not next_offset:
            return
        offset += next_offset


class ShareWalker:
    """Walk a share depth first, yielding ``DirEntry`` objects; errors go to ``errors``.

    ``tree`` is an smbprotocol ``TreeConnect`` (or anything with a ``.tree`` attribute
    holding one, such as ``common.smb.connection.SmbTree``). ``root`` is the
    share-relative directory to start from ('' for the whole share); it is not yielded
    itself. Iterate once; iterating again walks again from scratch.
    """

    def __init__(self, tree, root: str = "", *, backup_intent: bool = False):
        self.tree: TreeConnect = tree if isinstance(tree, TreeConnect) else tree.tree
        self.root = root.strip("\\/").replace("/", "\\")
        self.backup_intent = backup_intent
        self.errors: list[WalkError] = []
        self.directories_listed = 0

    def __iter__(self) -> Iterator[DirEntry]:
        self.errors = []
        self.directories_listed = 0
        stack = [self.root]
        while stack:
            directory = stack.pop()
            subdirectories = []
            for entry in self._list(directory):
                if entry.is_dir and not entry.is_reparse_point:
                    subdirectories.append(entry.path)
                yield entry
            # Reversed so that siblings are visited in the order the server listed them.
            stack.extend(reversed(subdirectories))

    def _output_length(self) -> int:
        connection = self.tree.session.connection
        if not connection.supports_multi_credit:
            return _CREDIT_UNIT
        window = connection.sequence_window
        spare_credits = max(1, (window["high"] - window["low"]) // 2)
        return max(_CREDIT_UNIT, min(_MAX_OUTPUT, connection.max_transact_size,
                                     spare_credits * _CREDIT_UNIT))

    def _list(self, directory: str) -> Iterator[DirEntry]:
        handle = Open(self.tree, directory)
        options = CreateOptions.FILE_DIRECTORY_FILE
        if self.backup_intent:
            options |= CreateOptions.FILE_OPEN_FOR_BACKUP_INTENT
        try:
            handle.create(
                ImpersonationLevel.Impersonation,
                DirectoryAccessMask.FILE_LIST_DIRECTORY | DirectoryAccessMask.FILE_READ_ATTRIBUTES
                | DirectoryAccessMask.SYNCHRONIZE,
                FileAttributes.FILE_ATTRIBUTE_DIRECTORY,
                ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE
                | ShareAccess.FILE_SHARE_DELETE,
                CreateDisposition.FILE_OPEN,
                options,
            )
        except SMBResponseException as exc:
            self._record(directory, exc.status, "open directory failed")
            return
        except (SMBException, OSError) as exc:
            raise from_smbprotocol(exc, directory, "open directory") from None
        try:
            self.directories_listed += 1
            while True:
                try:
                    buffer = self._query(handle)
                except SMBResponseException as exc:
                    if exc.status not in _STATUS_DONE:
                        self._record(directory, exc.status, "list directory failed")
                    return
                except (SMBException, OSError) as exc:
                    raise from_smbprotocol(exc, directory, "list directory") from None
                if not buffer:
                    return
                yield from parse_directory_buffer(buffer, directory)
        finally:
            try:
                handle.close()
            except (SMBException, OSError):
                pass

    def _query(self, handle: Open) -> bytes:
        request, _ = handle.query_directory(
            "*", FileInformationClass.FILE_ID_FULL_DIRECTORY_INFORMATION,
            max_output=self._output_length(), send=False)
        connection = self.tree.session.connection
        sent = connection.send(request, self.tree.session.session_id, self.tree.tree_connect_id)
        response = SMB2QueryDirectoryResponse()
        response.unpack(connection.receive(sent)["data"].get_value())
        return response["buffer"].get_value()

    def _record(self, path: str, status: int, message: str) -> None:
        self.errors.append(WalkError(path, status, status_name(status), message))


def walk(tree, root: str = "", errors: list[WalkError] | None = None) -> Iterator[DirEntry]:
    """Yield every entry under ``root`` of ``tree``, depth first.

    Directories that could not be listed are appended to ``errors`` when the walk ends
    (or is abandoned); use ``ShareWalker`` directly to watch them as they happen.
    """
    walker = ShareWalker(tree, root)
    try:
        yield from walker
    finally:
        if errors is not None:
            errors.extend(walker.errors)


__all__ = ["DirEntry", "ShareWalker", "WalkError", "join", "parse_directory_buffer", "walk"]
