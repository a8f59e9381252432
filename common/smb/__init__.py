"""The SMB data plane: sessions, exact metadata, checksums and the lossless copy engine.

Proxy workers call ``copy_batch(source, destination, entries, options)`` with two
``SmbEndpoint`` values and get one ``FileResult`` per entry. Nothing in this package
knows about the job database or decides migration policy, and nothing in it logs a
password.
"""

import importlib

# What the package offers, by the module that holds it. Loaded on first use (PEP 562), so
# that importing one light module of the package (``common.smb.checksum`` for the
# transfer options every CLI command loads) does not import smbprotocol's whole stack
# (0.17 s of each command's start).
_EXPORTS = {
    "ALGORITHMS": "checksum", "DEFAULT_ALGORITHM": "checksum", "new_hasher": "checksum",
    "SmbEndpoint": "connection", "SmbTree": "connection", "close_pool": "connection",
    "get_tree": "connection", "open_tree": "connection",
    "CopyOptions": "copy", "FileEntry": "copy", "FileResult": "copy", "Outcome": "copy",
    "copy_batch": "copy", "copy_file": "copy", "is_temp_name": "copy", "temp_name": "copy",
    "SmbError": "errors", "SmbFileError": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """The exported ``name`` from the module that holds it, imported on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
