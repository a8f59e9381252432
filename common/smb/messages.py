"""SMB2 requests built from smbprotocol's structures, and their responses parsed raw.

The smbprotocol-based wire layer for what runs outside the copy fast path (metadata.py,
the transfer service's destination preparation): it builds CREATE, QUERY_INFO, SET_INFO
and CLOSE requests (addressed to a file id, or to the "previous CREATE of this compound"
id) and pulls fields out of response bodies with ``struct``, keeping FILETIME values as
raw 64-bit integers (smbprotocol's datetimes drop the last 100 ns). It also packs the
FSCTL_SRV_COPYCHUNK buffers the copy engine sends over common.smb.fastpath.

It must never decide policy (what to copy, in which order): its callers do.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from smbprotocol.create_contexts import CreateContextName, SMB2CreateContextRequest
from smbprotocol.open import (
    SMB2CloseRequest,
    SMB2CreateRequest,
    SMB2QueryInfoRequest,
    SMB2SetInfoRequest,
)

# The file id that means "the file opened by the CREATE earlier in this compound".
RELATED_FILE_ID = b"\xff" * 16

# Access mask bits (MS-SMB2 2.2.13.1.1).
FILE_READ_DATA = 0x1
FILE_WRITE_DATA = 0x2
FILE_APPEND_DATA = 0x4
FILE_READ_EA = 0x8
FILE_WRITE_EA = 0x10
FILE_READ_ATTRIBUTES = 0x80
FILE_WRITE_ATTRIBUTES = 0x100
DELETE = 0x10000
READ_CONTROL = 0x20000
WRITE_DAC = 0x40000
WRITE_OWNER = 0x80000
SYNCHRONIZE = 0x100000
ACCESS_SYSTEM_SECURITY = 0x1000000

# Share access.
SHARE_READ = 0x1
SHARE_WRITE = 0x2
SHARE_DELETE = 0x4
SHARE_ALL = SHARE_READ | SHARE_WRITE | SHARE_DELETE

# Create dispositions.
FILE_SUPERSEDE = 0
FILE_OPEN = 1
FILE_CREATE = 2
FILE_OPEN_IF = 3
FILE_OVERWRITE_IF = 5

# Create options.
FILE_DIRECTORY_FILE = 0x1
FILE_NON_DIRECTORY_FILE = 0x40
FILE_OPEN_REPARSE_POINT = 0x200000

IMPERSONATION = 2

# QUERY_INFO / SET_INFO.
INFO_FILE = 1
FILE_BASIC_INFORMATION = 4
FILE_RENAME_INFORMATION = 10
FILE_DISPOSITION_INFORMATION = 13

OWNER_SECURITY_INFORMATION = 0x1
GROUP_SECURITY_INFORMATION = 0x2
DACL_SECURITY_INFORMATION = 0x4
SACL_SECURITY_INFORMATION = 0x8

FILE_ATTRIBUTE_READONLY = 0x1
FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_ARCHIVE = 0x20
FILE_ATTRIBUTE_NORMAL = 0x80

FSCTL_SRV_REQUEST_RESUME_KEY = 0x00140078
FSCTL_SRV_COPYCHUNK_WRITE = 0x001480F2

_BASIC = struct.Struct("<qqqqI4x")
_CREATE_RESPONSE = struct.Struct("<HBBIqqqqqqII16s")


@dataclass(frozen=True)
class BasicInfo:
    """FILE_BASIC_INFORMATION with raw FILETIMEs (100 ns units since 1601) and attributes."""

    creation_time: int
    last_access_time: int
    last_write_time: int
    change_time: int
    attributes: int


@dataclass(frozen=True)
class Opened:
    """What a CREATE response tells: the file id, times, attributes and size."""

    file_id: bytes
    basic: BasicInfo
    end_of_file: int
    create_action: int


def smb_path(relative: str) -> str:
    """A share-relative path in SMB form: backslashes, no leading separator."""
    return relative.replace("/", "\\").strip("\\")


def create(path: str, access: int, disposition: int, options: int, *,
           attributes: int = 0, share: int = SHARE_ALL,
           security_descriptor: bytes | None = None) -> SMB2CreateRequest:
    """A CREATE request for ``path`` (share-relative), optionally carrying an SD."""
    request = SMB2CreateRequest()
    request["impersonation_level"] = IMPERSONATION
    request["desired_access"] = access
    request["file_attributes"] = attributes
    request["share_access"] = share
    request["create_disposition"] = disposition
    request["create_options"] = options
    name = smb_path(path)
    request["buffer_path"] = name.encode("utf-16-le", "surrogatepass") if name else b"\x00\x00"
    if security_descriptor is not None:
        context = SMB2CreateContextRequest()
        context["buffer_name"] = CreateContextName.SMB2_CREATE_SD_BUFFER
        context["buffer_data"] = security_descriptor
        request["buffer_contexts"] = SMB2CreateContextRequest.pack_multiple([context])
    return request


def query_info(file_id: bytes, info_type: int, info_class: int, *,
               additional: int = 0, output_length: int = 65536) -> SMB2QueryInfoRequest:
    """A QUERY_INFO request (file information class, or security with ``additional``)."""
    request = SMB2QueryInfoRequest()
    request["info_type"] = info_type
    request["file_info_class"] = info_class
    request["output_buffer_length"] = output_length
    request["additional_information"] = additional
    request["file_id"] = file_id
    return request


def set_info(file_id: bytes, info_type: int, info_class: int, buffer: bytes, *,
             additional: int = 0) -> SMB2SetInfoRequest:
    """A SET_INFO request carrying ``buffer`` as is."""
    request = SMB2SetInfoRequest()
    request["info_type"] = info_type
    request["file_info_class"] = info_class
    request["additional_information"] = additional
    request["file_id"] = file_id
    request["buffer"] = buffer
    return request


def close(file_id: bytes) -> SMB2CloseRequest:
    """A CLOSE of ``file_id``."""
    request = SMB2CloseRequest()
    request["file_id"] = file_id
    return request


def wire_attributes(attributes: int) -> int:
    """Attributes as FILE_BASIC_INFORMATION must carry them: 0 means "unchanged", so
    "no attributes at all" is sent as FILE_ATTRIBUTE_NORMAL."""
    return attributes if attributes else FILE_ATTRIBUTE_NORMAL


def pack_basic(creation: int, last_access: int, last_write: int, change: int, attributes: int) -> bytes:
    """FILE_BASIC_INFORMATION bytes; a time of 0 and attributes of 0 leave a field unchanged."""
    return _BASIC.pack(creation, last_access, last_write, change, attributes)


def pack_rename(target: str, replace: bool) -> bytes:
    """FILE_RENAME_INFORMATION (SMB2 form) renaming to share-relative ``target``."""
    name = smb_path(target).encode("utf-16-le", "surrogatepass")
    return struct.pack("<B7xQI", 1 if replace else 0, 0, len(name)) + name


def pack_delete_on_close() -> bytes:
    """FILE_DISPOSITION_INFORMATION asking for deletion at close."""
    return b"\x01"


def parse_create(body: bytes) -> Opened:
    """Times, attributes, size and file id from a CREATE response body."""
    (_size, _oplock, _flags, action, creation, access, write_time, change,
     _allocation, end_of_file, attributes, _reserved, file_id) = _CREATE_RESPONSE.unpack_from(body)
    return Opened(file_id, BasicInfo(creation, access, write_time, change, attributes), end_of_file, action)


def parse_query_info(body: bytes) -> bytes:
    """The output buffer of a QUERY_INFO (or QUERY_DIRECTORY) response body."""
    offset, length = struct.unpack_from("<HI", body, 2)
    return body[offset - 64:offset - 64 + length]


def pack_copychunk(resume_key: bytes, chunks: list[tuple[int, int, int]]) -> bytes:
    """SRV_COPYCHUNK_COPY for (source offset, target offset, length) chunks."""
    body = struct.pack("<24sII", resume_key, len(chunks), 0)
    return body + b"".join(struct.pack("<qqII", s, t, n, 0) for s, t, n in chunks)


def parse_copychunk_response(buffer: bytes) -> tuple[int, int, int]:
    """(chunks written, chunk bytes written, total bytes written) of SRV_COPYCHUNK_RESPONSE."""
    return struct.unpack_from("<III", buffer)
