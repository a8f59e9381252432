"""Plain smbprotocol operations for the lab's tree builder and tree comparison.

The lab must judge our data plane with code that does not share it: this module talks to
a lab share through smbprotocol's low-level objects only (Connection, Session,
TreeConnect, Open) and never imports ``common.smb``. Times and security descriptors
travel as raw integers and raw bytes, so nothing is rounded on the way.

It must never log or raise the account's password, and is for lab servers only.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)
from smbprotocol.connection import Connection
from smbprotocol.create_contexts import CreateContextName, SMB2CreateContextRequest
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.file_info import FileAttributes, FileInformationClass, InfoType
from smbprotocol.header import NtStatus
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    ImpersonationLevel,
    Open,
    ShareAccess,
    SMB2QueryDirectoryResponse,
    SMB2QueryInfoRequest,
    SMB2QueryInfoResponse,
    SMB2SetInfoRequest,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER

# Access rights (MS-DTYP 2.4.3, MS-SMB2 2.2.13.1).
MAXIMUM_ALLOWED = 0x02000000
READ_CONTROL = 0x00020000
WRITE_DAC = 0x00040000
WRITE_OWNER = 0x00080000
DELETE = 0x00010000
FILE_READ_DATA = 0x0001
FILE_WRITE_DATA = 0x0002
FILE_READ_ATTRIBUTES = 0x0080
FILE_WRITE_ATTRIBUTES = 0x0100
FILE_LIST_DIRECTORY = 0x0001
SYNCHRONIZE = 0x00100000

# SECURITY_INFORMATION for QUERY_INFO / SET_INFO of type SECURITY: owner | group | DACL.
OWNER_GROUP_DACL = 0x7

ATTRIBUTE_DIRECTORY = FileAttributes.FILE_ATTRIBUTE_DIRECTORY
SHARE_ALL = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
CHUNK = 1 << 16

_BASIC = struct.Struct("<qqqqII")  # FileBasicInformation: 4 times, attributes, reserved
_DIR_ENTRY = struct.Struct("<IIQQQQqqIIIIQ")  # FileIdFullDirectoryInformation header


class LabTree:
    """A signed SMB session on one share of a lab server, as the migration account.

    Use as a context manager; ``tree`` is the smbprotocol TreeConnect.
    """

    def __init__(self, address: str, share: str, username: str = MIGRATION_USER,
                 password: str = MIGRATION_PASSWORD, port: int = 445):
        self.connection = Connection(uuid.uuid4(), address, port, require_signing=True)
        self.connection.connect()
        try:
            self.session = Session(self.connection, username, password, auth_protocol="ntlm")
            self.session.connect()
            self.tree = TreeConnect(self.session, rf"\\{address}\{share}")
            self.tree.connect()
            # smbprotocol never waits for credits; ask for plenty once.
            self.connection.echo(sid=self.session.session_id, credit_request=256)
        except BaseException:
            self.connection.disconnect(True)
            raise

    def close(self) -> None:
        """Log off and drop the connection."""
        self.connection.disconnect(True)

    def __enter__(self) -> "LabTree":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- opening -------------------------------------------------------------------
    def open(self, path: str, access: int = MAXIMUM_ALLOWED,
             disposition: int = CreateDisposition.FILE_OPEN, options: int = 0,
             attributes: int = 0, security_descriptor: bytes | None = None) -> Open:
        """Open (or create) ``path`` (share-relative, backslashes; may name a stream).

        ``security_descriptor`` (raw self-relative bytes) is applied at creation time.
        """
        handle = Open(self.tree, path.replace("/", "\\"))
        contexts = None
        if security_descriptor is not None:
            context = SMB2CreateContextRequest()
            context["buffer_name"] = CreateContextName.SMB2_CREATE_SD_BUFFER
            context["buffer_data"] = security_descriptor
            contexts = [context]
        handle.create(ImpersonationLevel.Impersonation, access, attributes, SHARE_ALL,
                      disposition, options, contexts)
        return handle

    def mkdir(self, path: str, attributes: int = 0, security_descriptor: bytes | None = None) -> None:
        """Create a directory (fails if it exists)."""
        handle = self.open(path, READ_CONTROL | FILE_READ_ATTRIBUTES | SYNCHRONIZE,
                           CreateDisposition.FILE_CREATE, CreateOptions.FILE_DIRECTORY_FILE,
                           attributes or ATTRIBUTE_DIRECTORY, security_descriptor)
        handle.close()

    def write_file(self, path: str, data: bytes = b"", *, sparse_total: int | None = None,
                   security_descriptor: bytes | None = None) -> None:
        """Create or overwrite a file (or stream ``file:name``) with ``data``.

        With ``sparse_total``, ``data`` is written at the start and the file is extended
        to ``sparse_total`` bytes (the rest reads back as zeros) by writing one last byte.
        """
        handle = self.open(path, FILE_READ_DATA | FILE_WRITE_DATA | FILE_READ_ATTRIBUTES
                           | FILE_WRITE_ATTRIBUTES | READ_CONTROL | SYNCHRONIZE,
                           CreateDisposition.FILE_OVERWRITE_IF,
                           CreateOptions.FILE_NON_DIRECTORY_FILE,
                           security_descriptor=security_descriptor)
        try:
            step = self.connection.max_write_size
            for offset in range(0, len(data), step):
                handle.write(data[offset:offset + step], offset)
            if sparse_total is not None and sparse_total > len(data):
                handle.write(b"\x00", sparse_total - 1)
        finally:
            handle.close()

    def delete(self, path: str) -> None:
        """Delete a file, an empty directory or a stream (``file:name``)."""
        handle = self.open(path, DELETE | FILE_READ_ATTRIBUTES | SYNCHRONIZE,
                           options=CreateOptions.FILE_DELETE_ON_CLOSE)
        handle.close()

    def read_chunks(self, path: str) -> Iterator[bytes]:
        """The bytes of a file or stream, in chunks of at most the server's read size."""
        handle = self.open(path, FILE_READ_DATA | FILE_READ_ATTRIBUTES | SYNCHRONIZE,
                           options=CreateOptions.FILE_NON_DIRECTORY_FILE)
        try:
            size = handle.end_of_file
            step = min(self.connection.max_read_size, 1 << 20)
            offset = 0
            while offset < size:
                chunk = handle.read(offset, min(step, size - offset))
                if not chunk:
                    break
                offset += len(chunk)
                yield chunk
        finally:
            handle.close()

    # --- information -----------------------------------------------------------------
    def query_info(self, handle: Open, info_type: int, info_class: int,
                   additional_information: int = 0, length: int = CHUNK) -> bytes:
        """Raw output buffer of a QUERY_INFO on an open handle."""
        request = SMB2QueryInfoRequest()
        request["info_type"] = info_type
        request["file_info_class"] = info_class
        request["output_buffer_length"] = length
        request["additional_information"] = additional_information
        request["file_id"] = handle.file_id
        sent = self.connection.send(request, self.session.session_id, self.tree.tree_connect_id)
        response = SMB2QueryInfoResponse()
        response.unpack(self.connection.receive(sent)["data"].get_value())
        return response["buffer"].get_value()

    def set_info(self, handle: Open, info_type: int, info_class: int, buffer: bytes,
                 additional_information: int = 0) -> None:
        """A SET_INFO with a raw input buffer on an open handle."""
        request = SMB2SetInfoRequest()
        request["info_type"] = info_type
        request["file_info_class"] = info_class
        request["additional_information"] = additional_information
        request["file_id"] = handle.file_id
        request["buffer"] = buffer
        sent = self.connection.send(request, self.session.session_id, self.tree.tree_connect_id)
        self.connection.receive(sent)

    def basic_info(self, path: str) -> tuple[int, int, int, int, int]:
        """(creation, last-access, last-write, change, attributes): raw FILETIMEs."""
        handle = self.open(path, FILE_READ_ATTRIBUTES | SYNCHRONIZE)
        try:
            raw = self.query_info(handle, InfoType.SMB2_0_INFO_FILE,
                                  FileInformationClass.FILE_BASIC_INFORMATION, length=40)
        finally:
            handle.close()
        return _BASIC.unpack_from(raw)[:5]

    def set_basic_info(self, path: str, creation: int = 0, last_access: int = 0,
                       last_write: int = 0, change: int = 0, attributes: int = 0) -> None:
        """Set times (raw FILETIMEs; 0 = leave unchanged) and attributes (0 = unchanged)."""
        handle = self.open(path, FILE_WRITE_ATTRIBUTES | FILE_READ_ATTRIBUTES | SYNCHRONIZE)
        try:
            self.set_info(handle, InfoType.SMB2_0_INFO_FILE,
                          FileInformationClass.FILE_BASIC_INFORMATION,
                          _BASIC.pack(creation, last_access, last_write, change, attributes, 0))
        finally:
            handle.close()

    def security_descriptor(self, path: str, what: int = OWNER_GROUP_DACL) -> bytes:
        """The raw self-relative security descriptor (owner, group and DACL by default)."""
        handle = self.open(path, READ_CONTROL | SYNCHRONIZE)
        try:
            return self.query_info(handle, InfoType.SMB2_0_INFO_SECURITY, 0, what)
        finally:
            handle.close()

    def set_security_descriptor(self, path: str, descriptor: bytes,
                                what: int = OWNER_GROUP_DACL) -> None:
        """Replace owner, group and DACL (by default) with those of ``descriptor``."""
        handle = self.open(path, WRITE_DAC | WRITE_OWNER | READ_CONTROL | SYNCHRONIZE)
        try:
            self.set_info(handle, InfoType.SMB2_0_INFO_SECURITY, 0, descriptor, what)
        finally:
            handle.close()

    def streams(self, path: str) -> dict[str, int]:
        """Alternate data streams of ``path``: ``{":name:$DATA": size}`` (unnamed excluded)."""
        handle = self.open(path, FILE_READ_ATTRIBUTES | SYNCHRONIZE)
        try:
            raw = self.query_info(handle, InfoType.SMB2_0_INFO_FILE,
                                  FileInformationClass.FILE_STREAM_INFORMATION)
        except SMBResponseException as exc:
            if exc.status == NtStatus.STATUS_END_OF_FILE:  # a directory without streams
                return {}
            raise
        finally:
            handle.close()
        found, offset = {}, 0
        while raw:
            next_offset, name_length, size, _allocation = struct.unpack_from("<IIqq", raw, offset)
            name = raw[offset + 24:offset + 24 + name_length].decode("utf-16-le", "surrogatepass")
            if name != "::$DATA":
                found[name] = size
            if not next_offset:
                break
            offset += next_offset
        return found

    def listdir(self, path: str) -> Iterator[tuple[str, int, int]]:
        """(name, attributes, end of file) of each entry of a directory, without '.'/'..'."""
        handle = self.open(path, FILE_LIST_DIRECTORY | FILE_READ_ATTRIBUTES | SYNCHRONIZE,
                           options=CreateOptions.FILE_DIRECTORY_FILE)
        try:
            while True:
                request, _ = handle.query_directory(
                    "*", FileInformationClass.FILE_ID_FULL_DIRECTORY_INFORMATION, send=False)
                sent = self.connection.send(request, self.session.session_id,
                                            self.tree.tree_connect_id)
                try:
                    data = self.connection.receive(sent)["data"].get_value()
                except SMBResponseException as exc:
                    if exc.status == NtStatus.STATUS_NO_MORE_FILES:
                        return
                    raise
                response = SMB2QueryDirectoryResponse()
                response.unpack(data)
                buffer, offset = response["buffer"].get_value(), 0
                while buffer:
                    fields = _DIR_ENTRY.unpack_from(buffer, offset)
                    start = offset + _DIR_ENTRY.size
                    name = buffer[start:start + fields[9]].decode("utf-16-le", "surrogatepass")
                    if name not in (".", ".."):
                        yield name, fields[8], fields[6]
                    if not fields[0]:
                        break
                    offset += fields[0]
        finally:
            handle.close()
