"""SMB sessions to one share, opened per process, with enough credits to pipeline.

An ``SmbEndpoint`` names a share and the account that reaches it; ``open_tree`` logs on
(NTLM through smbprotocol, SMB signing required unless explicitly turned off, SMB 3
encryption when asked) and connects the tree; ``get_tree`` hands out one ``SmbTree`` per
(host, port, share, user) per process from a small pool.

smbprotocol never waits for credits: a request that needs more than it holds fails. So
after logon, and whenever the balance runs low, we ask the server for many credits with an
ECHO. The copy engine does not send through smbprotocol at all: it attaches a
``common.smb.fastpath.FastChannel`` to the pooled session for a batch (which waits for
credits itself) and hands the session back afterwards.

This module must never open a connection in a process that will fork afterwards (each
smbprotocol Connection runs a receive thread, which a fork does not carry over): the pool
notices a changed pid and starts afresh. It must never log or raise a password.
"""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass, field

from smbprotocol.connection import Connection
from smbprotocol.exceptions import SMBException
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from common.smb.errors import SmbFileError, from_smbprotocol

# What we ask for after logon; Samba granted about 575 for 512 asked in the lab.
CREDIT_REQUEST = 512
# Below this many credits in hand, top up with another ECHO before a batch.
CREDIT_LOW_WATER = 128


@dataclass(frozen=True)
class SmbEndpoint:
    """A share on a server and the account that reaches it.

    ``require_signing`` stays True unless a caller deliberately turns it off; ``encrypt``
    asks for SMB 3 encryption of the whole session. The password is never shown by repr.
    """

    host: str
    share: str
    username: str
    password: str = field(repr=False)
    port: int = 445
    encrypt: bool = False
    require_signing: bool = True

    @classmethod
    def configured(cls, host: str, share: str, username: str, password: str, port: int = 445) -> "SmbEndpoint":
        """An endpoint with signing and encryption as the process settings say
        (SMS_SMB_REQUIRE_SIGNING, SMS_SMB_ENCRYPT)."""
        from common.settings import get_settings

        settings = get_settings()
        return cls(host, share, username, password, port=port, encrypt=settings.smb_encrypt,
                   require_signing=settings.smb_require_signing)

    @property
    def pool_key(self) -> tuple:
        """What makes two endpoints share one session in the per-process pool."""
        return (self.host.lower(), self.port, self.share.lower(), self.username,
                self.encrypt, self.require_signing)

    @property
    def unc(self) -> str:
        """The share's UNC path, ``\\\\host\\share``."""
        return f"\\\\{self.host}\\{self.share}"


class SmbTree:
    """One logged-on session and connected tree on one share, usable by one thread.

    ``send`` puts one request or a compound on the wire and returns the pending requests;
    ``receive`` waits for one and returns the response body (raising ``SmbFileError``
    with the NTSTATUS on failure).
    """

    def __init__(self, endpoint: SmbEndpoint):
        self.endpoint = endpoint
        self.pid = os.getpid()
        self.connection = Connection(uuid.uuid4(), endpoint.host, endpoint.port,
                                     require_signing=endpoint.require_signing)
        self.session: Session | None = None
        self.tree: TreeConnect | None = None
        try:
            self.connection.connect()
            self.session = Session(self.connection, endpoint.username, endpoint.password,
                                   require_encryption=endpoint.encrypt, auth_protocol="ntlm")
            self.session.connect()
            self.tree = TreeConnect(self.session, endpoint.unc)
            self.tree.connect()
            self.top_up_credits(force=True)
        except (SMBException, OSError) as exc:
            self.close()
            raise from_smbprotocol(exc, endpoint.unc, f"log on to share as {endpoint.username}") from None

    @property
    def credits(self) -> int:
        """Credits currently in hand (sequence window size)."""
        window = self.connection.sequence_window
        return window["high"] - window["low"]

    def top_up_credits(self, force: bool = False) -> None:
        """Ask the server for many credits with an ECHO when few are left (or always)."""
        if force or self.credits < CREDIT_LOW_WATER:
            self.connection.echo(sid=self.session.session_id, credit_request=CREDIT_REQUEST)

    @property
    def alive(self) -> bool:
        """True while the transport and its receive thread are up."""
        worker = getattr(self.connection, "_t_worker", None)
        return self.tree is not None and worker is not None and worker.is_alive()

    def send(self, messages: list, related: bool = True) -> list:
        """Send one request, or several as one compound (related: they share the file id)."""
        sid = self.session.session_id
        tid = self.tree.tree_connect_id
        if len(messages) == 1:
            return [self.connection.send(messages[0], sid=sid, tid=tid)]
        return self.connection.send_compound(messages, sid, tid, related=related)

    def receive(self, request, path: str, action: str) -> bytes:
        """The body of the response to ``request``; an NTSTATUS failure raises SmbFileError."""
        try:
            response = self.connection.receive(request, resolve_symlinks=False)
        except (SMBException, OSError) as exc:
            raise from_smbprotocol(exc, path, action) from None
        return response["data"].get_value()

    def close(self) -> None:
        """Log off and close the transport; errors on the way out are ignored."""
        try:
            self.connection.disconnect(True)
        except Exception:  # noqa: BLE001 - a dying connection may fail in many ways
            pass
        self.tree = None


_pool: dict[tuple, SmbTree] = {}
_pool_pid = os.getpid()
_pool_lock = threading.Lock()


def open_tree(endpoint: SmbEndpoint) -> SmbTree:
    """Log on to ``endpoint`` and connect its share: a new session the caller must close."""
    return SmbTree(endpoint)


def get_tree(endpoint: SmbEndpoint) -> SmbTree:
    """This process's pooled session for ``endpoint``, opened on first use.

    After a fork the child starts an empty pool (the parent's receive threads did not
    come along); a dead session is replaced. Credits are topped up on each checkout.
    """
    global _pool_pid
    with _pool_lock:
        if _pool_pid != os.getpid():
            _pool.clear()
            _pool_pid = os.getpid()
        tree = _pool.get(endpoint.pool_key)
        if tree is not None and not tree.alive:
            tree.close()
            tree = None
        if tree is None:
            tree = _pool[endpoint.pool_key] = open_tree(endpoint)
        else:
            try:
                tree.top_up_credits()
            except (SMBException, OSError):
                tree.close()
                tree = _pool[endpoint.pool_key] = open_tree(endpoint)
        return tree


def close_pool() -> None:
    """Close every pooled session of this process (e.g. when a worker shuts down)."""
    with _pool_lock:
        if _pool_pid == os.getpid():
            for tree in _pool.values():
                tree.close()
        _pool.clear()


__all__ = ["SmbEndpoint", "SmbTree", "SmbFileError", "open_tree", "get_tree", "close_pool"]
