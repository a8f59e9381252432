"""Exact file metadata over smbprotocol, for callers outside the copy fast path.

``stat`` gives raw FILETIMEs (100 ns since 1601, never datetimes, which drop the last
digit), attributes and size; ``compound`` sends a related compound and reads every
response; ``security_information`` names the security descriptor parts the data plane
copies (owner | group | DACL, plus SACL only when asked). The copy engine itself uses
common.smb.fastpath; proxy workers and the transfer service use these helpers on the
pooled smbprotocol sessions between batches.

Every function here opens, acts and closes in one compound request. None of them ever
changes data, and none ever "fixes" a time or an ACL it read.
"""

from __future__ import annotations

from common.smb import messages as m
from common.smb.connection import SmbTree
from common.smb.errors import SmbFileError

Opened = m.Opened


def security_information(include_sacl: bool) -> int:
    """The SECURITY_INFORMATION flags we copy: owner, group, DACL (+ SACL when asked)."""
    flags = m.OWNER_SECURITY_INFORMATION | m.GROUP_SECURITY_INFORMATION | m.DACL_SECURITY_INFORMATION
    return flags | (m.SACL_SECURITY_INFORMATION if include_sacl else 0)


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


