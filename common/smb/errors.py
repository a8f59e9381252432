"""Errors of the SMB data plane, in terms an administrator can act on.

An ``SmbFileError`` carries the NTSTATUS name (``STATUS_ACCESS_DENIED``), its hex code,
a short message and the share-relative path it concerns. It must never carry a
credential: messages are built from the status and the path only, never from a
connection string or an endpoint's password.
"""

from __future__ import annotations

import functools

from smbprotocol.exceptions import SMBException, SMBResponseException
from smbprotocol.header import NtStatus


class SmbError(Exception):
    """Base class of every error raised by common.smb."""


@functools.lru_cache(maxsize=None)
def _status_names() -> dict[int, str]:
    return {
        value: name
        for name, value in vars(NtStatus).items()
        if name.startswith("STATUS_") and isinstance(value, int)
    }


def status_name(code: int) -> str:
    """The symbolic NTSTATUS name of ``code`` (``STATUS_UNKNOWN_0x...`` when unknown)."""
    return _status_names().get(code, f"STATUS_UNKNOWN_0x{code:08X}")


class SmbFileError(SmbError):
    """An SMB request about one path failed with an NTSTATUS (or a transport error)."""

    def __init__(self, status: int, message: str, path: str = ""):
        self.status = status
        self.status_name = status_name(status) if status else "STATUS_TRANSPORT_ERROR"
        self.message = message
        self.path = path
        super().__init__(f"{self.status_name} (0x{status:08X}) {message}: {path!r}")

    @property
    def status_hex(self) -> str:
        """The NTSTATUS code as ``0xC0000022``."""
        return f"0x{self.status:08X}"


STATUS_TRANSPORT_ERROR = 0


def from_smbprotocol(exc: BaseException, path: str, action: str) -> SmbFileError:
    """Turn an smbprotocol exception into an SmbFileError for ``path``.

    ``action`` says what was attempted ("read", "rename into place" ...); it becomes part
    of the message together with the NTSTATUS name.
    """
    if isinstance(exc, SmbFileError):
        return exc
    if isinstance(exc, SMBResponseException):
        return SmbFileError(exc.status, f"{action} failed", path)
    if isinstance(exc, (SMBException, OSError)):
        return SmbFileError(STATUS_TRANSPORT_ERROR, f"{action} failed: {type(exc).__name__}", path)
    raise exc
