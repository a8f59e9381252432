"""Cutover verification: what a user at the old address sees, checked over SMB.

``verify_server_name`` asks the server at an address for its name (srvsvc
NetrServerGetInfo level 101, through ``common.smb.rpc``); ``verify_share`` connects to a
share there as the given account, lists it and reads a sample of its files in full
(smbprotocol's ``smbclient``, signing required, a private connection cache closed
afterwards). Both raise ``VerificationFailed`` with the address, share and NTSTATUS or
RPC error an administrator can act on.

This module only reads: it must never write to a share, and never put the password in a
message.
"""

from __future__ import annotations

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)
import smbclient
from smbprotocol.exceptions import SMBException, SMBResponseException

from common.smb.rpc import RpcError, SrvsvcClient

# How many directory entries verification looks at, at most, to find its sample files.
MAX_ENTRIES_SEEN = 500


class VerificationFailed(Exception):
    """A user at the old address would not get what they had before; the message says what."""


def verify_server_name(address: str, expected: str, username: str, password: str, *, port: int = 445) -> str:
    """The name the server at ``address`` gives (NetrServerGetInfo 101); it must be ``expected``."""
    try:
        with SrvsvcClient(address, username, password, port=port) as client:
            name = client.server_info(101).name
    except RpcError as exc:
        raise VerificationFailed(f"\\\\{address}: srvsvc NetrServerGetInfo failed: {exc}") from None
    if name.upper() != expected.upper():
        raise VerificationFailed(f"\\\\{address} answers as {name!r}, not {expected!r}")
    return name


def verify_share(address: str, share: str, username: str, password: str, *, sample: int = 5,
                 port: int = 445) -> tuple[int, int]:
    """List ``\\\\address\\share`` and read up to ``sample`` files in full; (files, bytes) read."""
    root = f"\\\\{address}\\{share}"
    cache: dict = {}
    files = size = 0
    try:
        smbclient.register_session(address, username=username, password=password, port=port,
                                   require_signing=True, connection_timeout=15, connection_cache=cache)
        pending, seen = [root], 0
        while pending and files < sample and seen < MAX_ENTRIES_SEEN:
            folder = pending.pop(0)
            for entry in smbclient.scandir(folder, port=port, connection_cache=cache):
                seen += 1
                if entry.is_dir():
                    pending.append(entry.path)
                elif files < sample:
                    with smbclient.open_file(entry.path, mode="rb", port=port, connection_cache=cache) as handle:
                        data = handle.read()
                    expected = entry.smb_info.end_of_file
                    if len(data) != expected:
                        raise VerificationFailed(f"{entry.path}: read {len(data)} bytes, the listing says {expected}")
                    files += 1
                    size += len(data)
    except SMBResponseException as exc:
        raise VerificationFailed(f"{root}: {exc.message} (NTSTATUS 0x{exc.status:08X})") from None
    except (SMBException, OSError, ValueError) as exc:
        raise VerificationFailed(f"{root}: {type(exc).__name__}: {exc}") from None
    finally:
        smbclient.reset_connection_cache(connection_cache=cache)
    return files, size
