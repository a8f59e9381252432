"""Validation of the share-relative paths a transfer joins onto a destination share.

A path reaches the copy engine from a source server's directory listings, through the job
database. A hostile or broken source (or a tampered record) could hand over a name that,
joined naively, leaves the destination share's root or names something else than a file:
``..`` components, an absolute path (``\\x``, ``C:\\x``, ``\\\\server\\share``), a ``:``
stream or drive suffix, an empty component (a trailing or doubled separator), or a NUL.
``safe_relative_path`` refuses every such path with ``UnsafePath``; the transfer records
the entry failed with that reason instead of copying it.

Names are otherwise kept exactly: never normalised or case-folded; an unpaired UTF-16
surrogate is a valid NTFS name and passes. This module must never touch the network or
rewrite a name into another one.
"""

from __future__ import annotations

UNSAFE_PATH = "UNSAFE_PATH"


class UnsafePath(ValueError):
    """A share-relative path that could leave the share's root or name a stream."""

    status_name = UNSAFE_PATH


def safe_relative_path(path: str) -> str:
    """``path`` with backslashes as separators, or UnsafePath when it is not a plain
    share-relative path. The empty path (the share root itself) is allowed."""
    if path == "":
        return path
    normalised = path.replace("/", "\\")
    if "\x00" in normalised:
        raise UnsafePath(f"refused a path holding a NUL character: {path!r}")
    if ":" in normalised:
        raise UnsafePath(f"refused a path with a stream or drive suffix (':'): {path!r}")
    if normalised.startswith("\\"):
        raise UnsafePath(f"refused an absolute path: {path!r}")
    for part in normalised.split("\\"):
        if part == "":
            raise UnsafePath(f"refused a path with an empty component (trailing or doubled "
                             f"separator): {path!r}")
        if part in (".", ".."):
            raise UnsafePath(f"refused a path with a {part!r} component: {path!r}")
    return normalised
