"""The SMB data plane: sessions, exact metadata, checksums and the lossless copy engine.

Proxy workers call ``copy_batch(source, destination, entries, options)`` with two
``SmbEndpoint`` values and get one ``FileResult`` per entry. Nothing in this package
knows about the job database or decides migration policy, and nothing in it logs a
password.
"""

from common.smb.checksum import ALGORITHMS, DEFAULT_ALGORITHM, new_hasher
from common.smb.connection import SmbEndpoint, SmbTree, close_pool, get_tree, open_tree
from common.smb.copy import (
    CopyOptions,
    FileEntry,
    FileResult,
    Outcome,
    copy_batch,
    copy_file,
    is_temp_name,
    temp_name,
)
from common.smb.errors import SmbError, SmbFileError

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "CopyOptions",
    "FileEntry",
    "FileResult",
    "Outcome",
    "SmbEndpoint",
    "SmbError",
    "SmbFileError",
    "SmbTree",
    "close_pool",
    "copy_batch",
    "copy_file",
    "get_tree",
    "is_temp_name",
    "new_hasher",
    "open_tree",
    "temp_name",
]
