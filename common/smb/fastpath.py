"""A fast SMB2/3 hot path for copying many small files, owning the socket after login.

smbprotocol does the parts that must be right and are rare: negotiate, NTLM/Kerberos
session setup (SPNEGO via pyspnego), key derivation and tree connect. After that the
per-file work of a copier is a handful of fixed-layout messages, and smbprotocol spends
most of its client CPU building and parsing generic message objects for them. A
``FastChannel`` takes over the already authenticated connection (``FastChannel.attach``):
it stops smbprotocol's receiver thread without closing the socket, carries on the
message-id / credit accounting, signs every request with the session's signing key
(AES-GMAC, AES-CMAC or HMAC-SHA256, whichever was negotiated, computed by the
``cryptography`` package and ``hmac``), verifies the signature of every response, and
encrypts/decrypts with the session's keys when the session or share requires encryption
(AES-GCM / AES-CCM, again from ``cryptography``). Requests are pre-laid-out ``struct``
templates; responses are parsed at fixed offsets; several files are in flight at once,
bounded by the credits the server granted.

Per small file (``read_small_files`` / ``write_small_files``), many files in flight:

* source: one related compound CREATE + QUERY_INFO(security: owner|group|dacl) + READ +
  CLOSE. Times (100 ns FILETIME integers), size and attributes come from the CREATE
  response itself, which carries the same fields as FileNetworkOpenInformation, so no
  separate QUERY_INFO(FileBasicInformation) is needed; the CLOSE asks for the same
  fields again (post-query), so a file that moved while it was read is seen without an
  extra round trip;
* destination: CREATE of a temporary name (carrying the security descriptor as an
  ``SecD`` create context) + WRITE in one compound; only when both succeeded, on the same
  handle SET_INFO(FileRenameInformation, ReplaceIfExists) + SET_INFO(FileBasicInformation,
  raw FILETIMEs and attributes; after the rename, which makes Samba set ARCHIVE) + CLOSE.
  A failed write therefore never appears under the real name: the temporary file is
  deleted instead. (Samba 4.17 carries on with the rest of a related compound after a
  failed WRITE: measured on a full disk, CREATE + WRITE(STATUS_DISK_FULL) + rename +
  CLOSE left a truncated file under its real name. So the rename waits for the WRITE's
  response.) Access is granted when the handle is opened, so a DACL given at create
  time that denies the copying account cannot lock it out of the later steps.

Large files and anything else go through ``Handle`` calls: ``open``, ``read_range`` /
``write_range`` (pipelined READs / WRITEs of up to 1 MiB, several in flight; runs of
zeros can be skipped), ``query_security`` / ``set_security``, ``query_streams``,
``set_basic_info``, ``set_end_of_file``, ``rename``, ``delete_on_close``, ``ioctl``
(FSCTLs such as server-side copy), ``close``. ``list_directory`` (QUERY_DIRECTORY) and
``stat_files`` (pipelined CREATE + CLOSE) tell what a share already holds.

It must never: implement authentication, negotiate or tree connect itself (those stay
smbprotocol's); send an unsigned request or accept an unsigned or wrongly signed
response on a signed session; be used from two threads at once (one channel per thread;
open connections after fork); let smbprotocol use the connection while the channel owns
it (``release()`` hands it back).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM
from smbprotocol.connection import Ciphers, Connection, SigningAlgorithms, SMB2Echo
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from common.smb.errors import SmbError, SmbFileError, status_name

# --- protocol constants (MS-SMB2) -----------------------------------------------------
CMD_CREATE, CMD_CLOSE, CMD_READ, CMD_WRITE = 0x05, 0x06, 0x08, 0x09
CMD_QUERY_DIRECTORY, CMD_IOCTL = 0x0E, 0x0B
CMD_QUERY_INFO, CMD_SET_INFO = 0x10, 0x11

FLAG_ASYNC = 0x02
FLAG_RELATED = 0x04
FLAG_SIGNED = 0x08
FLAG_DFS = 0x10000000

STATUS_PENDING = 0x00000103
STATUS_END_OF_FILE = 0xC0000011
STATUS_NO_MORE_FILES = 0x80000006
STATUS_NO_SUCH_FILE = 0xC000000F
STATUS_DATA_ERROR = 0xC000003E
STATUS_BUFFER_OVERFLOW = 0x80000005
STATUS_BUFFER_TOO_SMALL = 0xC0000023

INFO_FILE, INFO_SECURITY = 1, 3
FILE_BASIC_INFORMATION = 4
FILE_RENAME_INFORMATION = 10
FILE_DISPOSITION_INFORMATION = 13
FILE_END_OF_FILE_INFORMATION = 20
FILE_DIRECTORY_INFORMATION = 1
FILE_INTERNAL_INFORMATION = 6
FILE_ID_FULL_DIRECTORY_INFORMATION = 38
FILE_STREAM_INFORMATION = 22
SECINFO_OWNER_GROUP_DACL = 0x7
SECINFO_SACL = 0x8
IOCTL_IS_FSCTL = 0x1

# access masks
FILE_READ_DATA = 0x1
FILE_LIST_DIRECTORY = 0x1
FILE_WRITE_DATA = 0x2
FILE_READ_ATTRIBUTES = 0x80
FILE_WRITE_ATTRIBUTES = 0x100
DELETE = 0x10000
READ_CONTROL = 0x20000
WRITE_DAC = 0x40000
WRITE_OWNER = 0x80000
SYNCHRONIZE = 0x100000
ACCESS_SYSTEM_SECURITY = 0x1000000
SOURCE_ACCESS = FILE_READ_DATA | FILE_READ_ATTRIBUTES | READ_CONTROL
DEST_ACCESS = (
    FILE_WRITE_DATA | FILE_WRITE_ATTRIBUTES | FILE_READ_ATTRIBUTES | DELETE | READ_CONTROL
    | WRITE_DAC | WRITE_OWNER
)

# create dispositions and options
FILE_OPEN = 1
FILE_CREATE = 2
FILE_OPEN_IF = 3
FILE_DIRECTORY_FILE = 0x1
FILE_OVERWRITE_IF = 5
FILE_NON_DIRECTORY_FILE = 0x40
FILE_DELETE_ON_CLOSE = 0x1000
FILE_OPEN_FOR_BACKUP_INTENT = 0x4000
FILE_ATTRIBUTE_NORMAL = 0x80
SHARE_READ_WRITE_DELETE = 0x7

RELATED_FILE_ID = b"\xff" * 16
_ZERO_SIG = b"\x00" * 16
_MAX_PAYLOAD = 65536
_UNBOUNDED_ID = 0xFFFFFFFFFFFFFFFF

# --- struct templates -------------------------------------------------------------------
# SMB2 sync header: ProtocolId, StructureSize, CreditCharge, Status, Command, CreditRequest,
# Flags, NextCommand, MessageId, Reserved(ProcessId), TreeId, SessionId, Signature.
_HEADER = struct.Struct("<4sHHIHHIIQIIQ16s")
_RESP_FIELDS = struct.Struct("<IHHIIQ")  # at offset 8: Status Command Credit Flags Next MsgId
_CREATE = struct.Struct("<HBBIQQIIIIIHHII")  # 56 bytes, then name and create contexts
_CREATE_RESP = struct.Struct("<8xQQQQQQI4x16s")  # times, alloc, eof, attributes, file id
_CLOSE = struct.Struct("<HHI16s")
_READ = struct.Struct("<HBBIQ16sIIIHHB")  # 49 bytes
_READ_RESP = struct.Struct("<HBxI")
_WRITE = struct.Struct("<HHIQ16sIIHHI")  # 48 bytes, then data
_WRITE_RESP = struct.Struct("<4xI")
_QUERY = struct.Struct("<HBBIHHIII16sB")  # 41 bytes
_QUERY_RESP = struct.Struct("<2xHI")
_STREAM_ENTRY = struct.Struct("<IIq8x")  # NextEntryOffset, StreamNameLength, StreamSize
_SET = struct.Struct("<HBBIHHI16s")  # 32 bytes, then buffer
_QUERY_DIR = struct.Struct("<HBBI16sHHI")  # 32 bytes, then the search pattern
_DIR_ENTRY = struct.Struct("<IIQQQQQQIII4x8x")  # FileIdFullDirectoryInformation, 80 bytes
_IOCTL = struct.Struct("<HHI16sIIIIIIII")  # 56 bytes, then input
_IOCTL_RESP = struct.Struct("<HHI16sIIIIII")
_BASIC = struct.Struct("<QQQQI4x")
_RENAME = struct.Struct("<B7xQI")
_CONTEXT = struct.Struct("<IHHHHI4s4x")  # one create context named SecD, data follows
_TRANSFORM = struct.Struct("<4s16s16sIHHQ")  # 52 bytes
_NBT = struct.Struct(">I")


class FastPathError(SmbFileError):
    """An SMB request of the fast path failed with an NTSTATUS code (the channel is fine)."""

    def __init__(self, status: int, path: str = "", command: str = ""):
        self.command = command
        super().__init__(status, f"{command or 'request'} failed", path)


class FastPathUnavailable(SmbError):
    """The connection cannot be taken over (dialect, pending requests ...): use smbprotocol."""


class ChannelBroken(SmbError):
    """The socket or the message stream failed; the channel (and connection) is unusable."""


@dataclass(slots=True)
class FileInfo:
    """What a CREATE (or CLOSE with post-query) response says about a file."""

    creation_time: int
    last_access_time: int
    last_write_time: int
    change_time: int
    allocation_size: int
    end_of_file: int
    attributes: int


@dataclass(slots=True)
class SourceFile:
    """One file read by ``read_small_files``: metadata, SD and data, or an error.

    ``status`` is 0 on success; otherwise ``status_name`` names the NTSTATUS and
    ``command`` the failing request. ``data`` holds at most ``max_bytes``; compare
    ``len(data)`` with ``info.end_of_file`` to see whether the file was read whole.
    ``streams`` (when asked for) lists the alternate data streams as (``":name:$DATA"``,
    size), the unnamed data stream left out. ``after`` is what the compound's CLOSE
    (post-query) says of the file once it was read: compare it with ``info`` to see
    whether the file moved while it was read (size, last-write and change time).
    """

    path: str
    status: int
    command: str
    info: FileInfo | None
    security: bytes | None
    data: bytes
    streams: list[tuple[str, int]] | None = None
    after: FileInfo | None = None

    @property
    def status_name(self) -> str:
        """The NTSTATUS name of ``status``."""
        return status_name(self.status)

    @property
    def complete(self) -> bool:
        """True when the file was read without error and entirely."""
        return self.status == 0 and self.info is not None and len(self.data) == self.info.end_of_file


@dataclass(slots=True)
class DestFile:
    """One file to write with ``write_small_files``.

    Times are raw FILETIME integers (0 = leave as the server sets it); ``attributes`` 0 is
    sent as FILE_ATTRIBUTE_NORMAL so the server's ARCHIVE is cleared; ``security`` is a
    self-relative security descriptor (owner, group, DACL) or None. ``temp_path`` defaults
    to ``path + ".sms-partial"`` in the same directory.
    """

    path: str
    data: bytes
    creation_time: int = 0
    last_access_time: int = 0
    last_write_time: int = 0
    change_time: int = 0
    attributes: int = 0
    security: bytes | None = None
    temp_path: str | None = None


@dataclass(slots=True)
class WriteResult:
    """The outcome of one ``DestFile``: the final state (from CLOSE) or an error."""

    path: str
    status: int
    command: str
    info: FileInfo | None

    @property
    def status_name(self) -> str:
        """The NTSTATUS name of ``status``."""
        return status_name(self.status)


@dataclass(slots=True)
class Handle:
    """An open file on a FastChannel (from ``open``); ``create_action`` says whether the
    CREATE opened (1), created (2) or overwrote (3) it; ``closed`` turns True once
    ``close`` was sent."""

    file_id: bytes
    path: str
    info: FileInfo
    create_action: int = 0
    closed: bool = False


class _Op:
    """A chain of requests sent together; complete when every response has arrived."""

    __slots__ = ("left", "responses", "context")

    def __init__(self, count: int, context):
        self.left = count
        self.responses: list = [None] * count
        self.context = context


class _DetachedTransport:
    """Stands in for smbprotocol's Tcp while the FastChannel owns the socket.

    Its ``recv`` returns b"" so smbprotocol's receiver thread ends at its next read; it
    lets exactly one send through (the hand-over ECHO) and refuses any later one.
    """

    def __init__(self, real):
        self.real = real
        self.connected = True
        self.sends_allowed = 1

    def recv(self, timeout):
        return b""

    def send(self, data):
        if self.sends_allowed <= 0:
            raise ChannelBroken("the SMB connection is owned by a FastChannel; release() it first")
        self.sends_allowed -= 1
        self.real.send(data)

    def close(self):
        self.connected = False
        self.real.close()


def _utf16(path: str) -> bytes:
    return path.replace("/", "\\").lstrip("\\").encode("utf-16-le", "surrogatepass")


def _credit_charge(length: int) -> int:
    return (max(length, 1) - 1) // _MAX_PAYLOAD + 1


class FastChannel:
    """Owns an authenticated SMB connection's socket and speaks the copier's few messages.

    Build it with ``FastChannel.attach(connection, session, tree)`` after smbprotocol has
    connected, authenticated and tree-connected; give the connection back with
    ``release()`` (or use it as a context manager). Not thread-safe.
    """

    def __init__(self, connection: Connection, session: Session, tree: TreeConnect, transport, *, timeout: float):
        self.connection = connection
        self.session = session
        self.tree = tree
        self.timeout = timeout
        self._transport = transport
        self._sock: socket.socket = transport._sock
        self._sid = session.session_id
        self._tid = tree.tree_connect_id
        self._dfs = FLAG_DFS if tree.is_dfs_share else 0
        self._low = connection.sequence_window["low"]
        self._high = connection.sequence_window["high"]
        # Without multi-credit (SMB 2.0.2, or a server without LARGE_MTU) every request costs
        # one credit, its CreditCharge is 0 and a READ or WRITE carries at most 64 KiB.
        self._multi_credit = bool(connection.supports_multi_credit)
        self._max_read = connection.max_read_size
        self._max_write = connection.max_write_size
        self._max_transact = connection.max_transact_size
        if not self._multi_credit:
            self._max_read = min(self._max_read, _MAX_PAYLOAD)
            self._max_write = min(self._max_write, _MAX_PAYLOAD)
            self._max_transact = min(self._max_transact, _MAX_PAYLOAD)
        self._pending: dict[int, tuple[_Op, int]] = {}
        self._rbuf = bytearray()
        self._broken: BaseException | None = None
        self._released = False
        self.target_credits = 512
        self._setup_security()

    # --- hand-over --------------------------------------------------------------------
    @classmethod
    def attach(
        cls,
        connection: Connection,
        session: Session,
        tree: TreeConnect,
        *,
        credits: int = 512,
        timeout: float = 300.0,
    ) -> "FastChannel":
        """Take over ``connection``'s socket from smbprotocol.

        The connection must be negotiated (SMB 2.0.2 or later; without multi-credit support
        READs and WRITEs are limited to 64 KiB), ``session`` authenticated and
        ``tree`` connected through it, with no request outstanding. smbprotocol's receiver
        thread is stopped after one last ECHO (which also asks for ``credits`` credits);
        from then on only this channel may use the connection until ``release()``.
        Raises FastPathUnavailable when that cannot be done safely.
        """
        if connection.dialect is None or connection.dialect < 0x0202:
            raise FastPathUnavailable("the fast path needs SMB 2.0.2 or later")
        if session.connection is not connection or tree.session is not session:
            raise FastPathUnavailable("session and tree must belong to this connection")
        if connection.outstanding_requests:
            raise FastPathUnavailable("smbprotocol has requests outstanding on this connection")
        if isinstance(connection.transport, _DetachedTransport):
            raise FastPathUnavailable("this connection is already owned by a FastChannel")
        worker = connection._t_worker
        if worker is None or not worker.is_alive():
            raise FastPathUnavailable("smbprotocol's receiver thread is not running")

        real = connection.transport
        shim = _DetachedTransport(real)
        connection.transport = shim
        # The worker is blocked in the real transport's recv (or about to call the shim's).
        # The ECHO's response wakes it; after handling it, its next read hits the shim and
        # it returns. If it already left, the ECHO response is still in the socket: ours.
        request = connection.send(SMB2Echo(), sid=session.session_id, credit_request=credits)
        worker.join(timeout)
        if worker.is_alive():
            connection.transport = real
            raise FastPathUnavailable("smbprotocol's receiver thread did not stop")
        message_id = request.message["message_id"].get_value()
        connection.outstanding_requests.pop(message_id, None)

        channel = cls(connection, session, tree, real, timeout=timeout)
        channel.target_credits = credits
        real._sock.settimeout(timeout)
        if request.response is None:
            op = _Op(1, None)
            channel._pending[message_id] = (op, 0)
            while op.left:
                channel._pump()
        return channel

    def release(self) -> None:
        """Give the connection back to smbprotocol (restart its receiver thread).

        Responses still due (from a generator abandoned half-way) are read and dropped
        first; files such a generator left open stay open until logoff. Afterwards
        smbprotocol (``session.disconnect()``, ``connection.disconnect()`` ...) works as
        before. A broken channel closes the connection instead.
        """
        if self._released:
            return
        if self._broken is None:
            try:
                while self._pending:
                    self._pump()
            except ChannelBroken:
                pass
        self._released = True
        if self._broken is not None or self._rbuf:
            self.connection.transport = self._transport
            self._transport.close()
            return
        conn = self.connection
        self._sock.settimeout(None)
        with conn.sequence_lock:
            conn.sequence_window["low"] = self._low
            conn.sequence_window["high"] = self._high
        conn.transport = self._transport
        worker = threading.Thread(
            target=conn._process_message_thread, name=f"msg_worker-{conn.server_name}:{conn.port}", daemon=True
        )
        conn._t_worker = worker
        worker.start()

    def __enter__(self) -> "FastChannel":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def credits(self) -> int:
        """Credits currently available for new requests."""
        return self._high - self._low

    @property
    def max_read(self) -> int:
        """The largest READ the server accepts (bytes)."""
        return self._max_read

    @property
    def max_write(self) -> int:
        """The largest WRITE the server accepts (bytes)."""
        return self._max_write

    @property
    def encrypted(self) -> bool:
        """True when every packet is encrypted (session or share requires it)."""
        return self._encrypt

    @property
    def signing_algorithm(self) -> str:
        """The algorithm signing requests and verifying responses ("" when encrypted)."""
        if not self._signing:
            return ""
        return {SigningAlgorithms.AES_GMAC: "AES-GMAC", SigningAlgorithms.AES_CMAC: "AES-CMAC"}.get(
            self._sign_algo, "HMAC-SHA256"
        )

    # --- security: signing and encryption ----------------------------------------------
    def _setup_security(self) -> None:
        conn, session = self.connection, self.session
        self._encrypt = bool(session.encrypt_data or self.tree.encrypt_data)
        key = session.signing_key
        self._signing = bool(session.signing_required and key) and not self._encrypt
        if self._encrypt:
            if not session.encryption_key:
                raise FastPathUnavailable("encryption required but no encryption key")
            cipher = conn.cipher_id if conn.dialect >= 0x0311 else Ciphers.AES_128_CCM
            gcm = cipher in (Ciphers.AES_128_GCM, Ciphers.AES_256_GCM)
            self._nonce_len = 12 if gcm else 11
            aead = AESGCM if gcm else AESCCM
            self._enc = aead(session.encryption_key)
            self._dec = aead(session.decryption_key)
        if not key:
            self._sign_algo = None
            return
        if conn.dialect >= 0x0311 and conn.signing_algorithm_id is not None:
            self._sign_algo = conn.signing_algorithm_id
        elif conn.dialect >= 0x0300:
            self._sign_algo = SigningAlgorithms.AES_CMAC
        else:
            self._sign_algo = SigningAlgorithms.HMAC_SHA256
        self._key = key
        if self._sign_algo == SigningAlgorithms.AES_GMAC:
            self._gmac = AESGCM(key)
        elif self._sign_algo == SigningAlgorithms.AES_CMAC:
            self._cmac = cmac.CMAC(algorithms.AES(key))

    def _signature(self, message, message_id: int, response: bool) -> bytes:
        """Signature of ``message`` (whose signature field is already zero)."""
        algo = self._sign_algo
        if algo == SigningAlgorithms.AES_GMAC:
            nonce = message_id.to_bytes(8, "little") + (b"\x01\x00\x00\x00" if response else b"\x00\x00\x00\x00")
            return self._gmac.encrypt(nonce, b"", message)
        if algo == SigningAlgorithms.AES_CMAC:
            mac = self._cmac.copy()
            mac.update(message)
            return mac.finalize()
        return hmac.new(self._key, message, hashlib.sha256).digest()[:16]

    def _encrypt_packet(self, data: bytes) -> bytes:
        nonce = os.urandom(self._nonce_len)
        header = _TRANSFORM.pack(
            b"\xfdSMB", _ZERO_SIG, nonce.ljust(16, b"\x00"), len(data), 0, 1, self._sid
        )
        sealed = self._enc.encrypt(nonce, data, header[20:])
        return header[:4] + sealed[-16:] + header[20:] + sealed[:-16]

    def _decrypt_packet(self, packet: bytes) -> bytes:
        _, signature, nonce, _size, _res, flags, session_id = _TRANSFORM.unpack_from(packet)
        if flags != 1 or session_id != self._sid:
            raise ChannelBroken("unexpected SMB transform header")
        return self._dec.decrypt(nonce[: self._nonce_len], packet[52:] + signature, packet[20:52])

    # --- sending ------------------------------------------------------------------------
    def _check(self) -> None:
        if self._broken is not None:
            raise ChannelBroken(f"channel failed earlier: {self._broken}") from self._broken
        if self._released:
            raise ChannelBroken("channel was released")

    def _send_chain(self, messages: list[tuple[int, bytes, int]], context, related: bool = True) -> _Op:
        """Send ``(command, body, credit charge)`` messages as one compound; register them.

        The caller has made sure enough credits are available.
        """
        charge_total = 0
        for _, _, charge in messages:
            charge_total += charge
        op = _Op(len(messages), context)
        pending = self._pending
        # Ask for what we spend plus a top-up while below the target.
        extra = 8 if self._high - self._low - charge_total < self.target_credits else 0
        flags_base = (FLAG_SIGNED if self._signing else 0) | self._dfs
        parts = []
        last = len(messages) - 1
        mid = self._low
        for index, (command, body, charge) in enumerate(messages):
            length = 64 + len(body)
            if index != last:
                pad = -length & 7
                next_command = length + pad
            else:
                pad = next_command = 0
            flags = flags_base | (FLAG_RELATED if related and index else 0)
            message = bytearray(
                _HEADER.pack(
                    b"\xfeSMB", 64, charge if self._multi_credit else 0, 0, command,
                    charge + (extra if index == last else 0), flags,
                    next_command, mid, 0, self._tid, self._sid, _ZERO_SIG,
                )
            )
            message += body
            if pad:
                message += b"\x00" * pad
            if flags_base & FLAG_SIGNED:
                message[48:64] = self._signature(message, mid, False)
            parts.append(message)
            pending[mid] = (op, index)
            mid += charge
        self._low = mid
        if self._encrypt:
            data = self._encrypt_packet(b"".join(parts))
            data = _NBT.pack(len(data)) + data
        else:
            data = b"".join([_NBT.pack(sum(map(len, parts))), *parts])
        try:
            self._sock.sendall(data)
        except OSError as exc:
            self._fail(exc)
        return op

    def _fail(self, exc: BaseException):
        self._broken = exc
        raise ChannelBroken(str(exc)) from exc

    # --- receiving ----------------------------------------------------------------------
    def _recv_exact(self, count: int) -> bytearray:
        """The next ``count`` bytes of the stream, as a new bytearray we may modify."""
        buf = self._rbuf
        have = len(buf)
        if count - have > _MAX_PAYLOAD:  # a big READ response: receive straight into place
            data = bytearray(count)
            data[:have] = buf
            buf.clear()
            view = memoryview(data)
            while have < count:
                try:
                    received = self._sock.recv_into(view[have:])
                except OSError as exc:  # includes socket.timeout
                    self._fail(exc)
                if not received:
                    self._fail(ConnectionResetError("server closed the SMB connection"))
                have += received
            return data
        while len(buf) < count:
            try:
                chunk = self._sock.recv(262144)
            except OSError as exc:
                self._fail(exc)
            if not chunk:
                self._fail(ConnectionResetError("server closed the SMB connection"))
            buf += chunk
        data = buf[:count]
        del buf[:count]
        return data

    def _pump(self) -> None:
        """Read one packet from the socket and hand each response to its request."""
        self._check()
        length = _NBT.unpack(self._recv_exact(4))[0] & 0xFFFFFF
        packet = self._recv_exact(length)
        encrypted = packet[:4] == b"\xfdSMB"
        if encrypted:
            try:
                packet = self._decrypt_packet(packet)
            except Exception as exc:  # noqa: BLE001 - any decrypt failure breaks the stream
                self._fail(exc)
        offset = 0
        total = len(packet)
        view = memoryview(packet)
        pending = self._pending
        while True:
            status, _command, credit, flags, next_command, mid = _RESP_FIELDS.unpack_from(packet, offset + 8)
            end = offset + next_command if next_command else total
            self._high += credit
            # Interim (async pending) responses are unsigned and final ones follow; an
            # unsolicited message id -1 would be an oplock break, and we request no oplocks.
            if not (status == STATUS_PENDING and flags & FLAG_ASYNC) and mid != _UNBOUNDED_ID:
                message = view[offset:end]
                if self._signing:
                    if not flags & FLAG_SIGNED:
                        self._fail(ChannelBroken(f"unsigned response to message {mid} on a signed session"))
                    # Verify over the message with its signature field zeroed, in place.
                    signature = bytes(message[48:64])
                    packet[offset + 48 : offset + 64] = _ZERO_SIG
                    if not hmac.compare_digest(self._signature(message, mid, True), signature):
                        self._fail(ChannelBroken(f"bad signature on the response to message {mid}"))
                entry = pending.pop(mid, None)
                if entry is None:
                    self._fail(ChannelBroken(f"response to unknown message id {mid}"))
                op, index = entry
                op.responses[index] = message
                op.left -= 1
            if not next_command:
                return
            offset = end

    def _wait(self, op: _Op) -> list:
        while op.left:
            self._pump()
        return op.responses

    def _reserve(self, needed: int) -> None:
        """Block until ``needed`` credits are available (answers free and grant credits)."""
        self._check()
        while self._high - self._low < needed:
            if not self._pending:
                self._fail(ChannelBroken(f"server granted no credits ({self._high - self._low} < {needed})"))
            self._pump()

    # --- message bodies -----------------------------------------------------------------
    @staticmethod
    def _create_body(
        path: str, access: int, disposition: int, options: int, share: int, attributes: int = 0,
        security: bytes | None = None,
    ) -> bytes:
        name = _utf16(path)
        contexts = b""
        name_field = name or b"\x00\x00"
        if security is not None:
            pad = -(120 + len(name_field)) & 7
            name_field += b"\x00" * pad
            contexts = _CONTEXT.pack(0, 16, 4, 0, 24, len(security), b"SecD") + security
        contexts_offset = 120 + len(name_field) if contexts else 0
        fixed = _CREATE.pack(
            57, 0, 0, 2, 0, 0, access, attributes, share, disposition, options,
            120, len(name), contexts_offset, len(contexts),
        )
        return fixed + name_field + contexts

    @staticmethod
    def _read_body(file_id: bytes, length: int, offset: int) -> bytes:
        return _READ.pack(49, 0x50, 0, length, offset, file_id, 0, 0, 0, 0, 0, 0)

    @staticmethod
    def _write_body(file_id: bytes, data, offset: int) -> bytes:
        return _WRITE.pack(49, 112, len(data), offset, file_id, 0, 0, 0, 0, 0) + data

    @staticmethod
    def _close_body(file_id: bytes, postquery: bool = False) -> bytes:
        return _CLOSE.pack(24, 1 if postquery else 0, 0, file_id)

    @staticmethod
    def _query_security_body(
        file_id: bytes, max_length: int = 65535, additional: int = SECINFO_OWNER_GROUP_DACL
    ) -> bytes:
        return _QUERY.pack(41, INFO_SECURITY, 0, max_length, 0, 0, 0, additional, 0, file_id, 0)

    @staticmethod
    def _query_streams_body(file_id: bytes, max_length: int = 65535) -> bytes:
        return _QUERY.pack(41, INFO_FILE, FILE_STREAM_INFORMATION, max_length, 0, 0, 0, 0, 0, file_id, 0)

    @staticmethod
    def _streams(buffer: bytes) -> list[tuple[str, int]]:
        """Named streams in a FILE_STREAM_INFORMATION buffer, as (":name:$DATA", size)."""
        streams = []
        offset = 0
        while len(buffer) - offset >= 24:
            next_entry, name_length, size = _STREAM_ENTRY.unpack_from(buffer, offset)
            name = buffer[offset + 24 : offset + 24 + name_length].decode("utf-16-le")
            if name != "::$DATA":
                streams.append((name, size))
            if not next_entry:
                break
            offset += next_entry
        return streams

    @staticmethod
    def _set_body(file_id: bytes, info_type: int, info_class: int, buffer: bytes, additional: int = 0) -> bytes:
        return _SET.pack(33, info_type, info_class, len(buffer), 96, 0, additional, file_id) + buffer

    @staticmethod
    def _basic_buffer(ctime: int, atime: int, mtime: int, chtime: int, attributes: int) -> bytes:
        return _BASIC.pack(ctime, atime, mtime, chtime, attributes or FILE_ATTRIBUTE_NORMAL)

    @staticmethod
    def _rename_buffer(target: str, replace: bool) -> bytes:
        name = _utf16(target)
        return _RENAME.pack(1 if replace else 0, 0, len(name)) + name

    def _charge(self, length: int) -> int:
        """The CreditCharge of a request sending or expecting ``length`` payload bytes
        (always 1 without multi-credit, where nothing may exceed 64 KiB)."""
        return _credit_charge(length) if self._multi_credit else 1

    # --- response parsing ---------------------------------------------------------------
    @staticmethod
    def _status(message: bytes) -> int:
        return int.from_bytes(message[8:12], "little")

    @staticmethod
    def _needed_length(message: bytes, asked: int) -> int:
        """The output length an error response of STATUS_BUFFER_TOO_SMALL says it needs
        (its 4-byte ErrorData), else twice ``asked``."""
        if len(message) >= 76 and int.from_bytes(message[68:72], "little") >= 4:
            return int.from_bytes(message[72:76], "little")
        return asked * 2

    @staticmethod
    def _create_info(message: bytes) -> tuple[FileInfo, bytes]:
        ctime, atime, mtime, chtime, alloc, eof, attrs, file_id = _CREATE_RESP.unpack_from(message, 64)
        return FileInfo(ctime, atime, mtime, chtime, alloc, eof, attrs), file_id

    @staticmethod
    def _close_info(message: bytes) -> FileInfo:
        ctime, atime, mtime, chtime, alloc, eof, attrs = struct.unpack_from("<QQQQQQI", message, 72)
        return FileInfo(ctime, atime, mtime, chtime, alloc, eof, attrs)

    @staticmethod
    def _query_output(message: memoryview) -> bytes:
        offset, length = _QUERY_RESP.unpack_from(message, 64)
        return bytes(message[offset : offset + length])

    @staticmethod
    def _read_data(message: memoryview) -> bytes:
        _, offset, length = _READ_RESP.unpack_from(message, 64)
        return bytes(message[offset : offset + length])

    # --- small files: source side -------------------------------------------------------
    def read_small_files(
        self,
        paths: Iterable[str],
        *,
        max_bytes: int = 65536,
        security: bool = True,
        streams: bool = False,
        sacl: bool = False,
        backup_intent: bool = False,
        depth: int = 32,
    ) -> Iterator[SourceFile]:
        """Read each path's metadata, security descriptor and first ``max_bytes`` bytes.

        One compound per file (CREATE + QUERY_INFO security [+ QUERY_INFO streams] + READ
        + CLOSE with post-query, whose times and size become ``after``), up to ``depth``
        files in flight. Yields a ``SourceFile`` per path in completion order (normally the order given); an NTSTATUS failure is that file's
        ``status``, never an exception. ``security=False`` skips the SD (for alternate
        data streams); ``streams=True`` also lists the file's alternate data streams;
        ``sacl=True`` adds the SACL to the SD (needs the privilege to read it).
        Paths are relative to the share; ``"dir\\file:stream"`` opens a stream.
        """
        max_bytes = max(0, min(max_bytes, self._max_read))
        read_charge = _credit_charge(max_bytes)
        per_file = 2 + read_charge + (1 if security else 0) + (1 if streams else 0)
        options = FILE_NON_DIRECTORY_FILE | (FILE_OPEN_FOR_BACKUP_INTENT if backup_intent else 0)
        read_body = self._read_body(RELATED_FILE_ID, max_bytes, 0)
        close_body = self._close_body(RELATED_FILE_ID, True)
        query_body = self._query_security_body(
            RELATED_FILE_ID, additional=SECINFO_OWNER_GROUP_DACL | (SECINFO_SACL if sacl else 0)
        )
        access = SOURCE_ACCESS | (ACCESS_SYSTEM_SECURITY if sacl and security else 0)
        streams_body = self._query_streams_body(RELATED_FILE_ID)
        inflight: deque[_Op] = deque()
        source = iter(paths)
        exhausted = False
        while True:
            while not exhausted and len(inflight) < depth:
                path = next(source, None)
                if path is None:
                    exhausted = True
                    break
                self._reserve(per_file)
                create = self._create_body(path, access, FILE_OPEN, options, SHARE_READ_WRITE_DELETE)
                messages = [(CMD_CREATE, create, 1)]
                if security:
                    messages.append((CMD_QUERY_INFO, query_body, 1))
                if streams:
                    messages.append((CMD_QUERY_INFO, streams_body, 1))
                messages.append((CMD_READ, read_body, read_charge))
                messages.append((CMD_CLOSE, close_body, 1))
                inflight.append(self._send_chain(messages, path))
            if not inflight:
                return
            op = inflight[0]
            while op.left:
                self._pump()
            inflight.popleft()
            yield self._source_result(op, security, streams)

    def _source_result(self, op: _Op, security: bool, streams: bool) -> SourceFile:
        responses = op.responses
        path = op.context
        create = responses[0]
        status = self._status(create)
        if status:
            return SourceFile(path, status, "CREATE", None, None, b"")
        info, _ = self._create_info(create)
        sd = stream_list = None
        index = 1
        if security:
            status = self._status(responses[index])
            if status:
                return SourceFile(path, status, "QUERY_INFO security", info, None, b"")
            sd = self._query_output(responses[index])
            index += 1
        if streams:
            status = self._status(responses[index])
            if status:
                return SourceFile(path, status, "QUERY_INFO streams", info, sd, b"")
            stream_list = self._streams(self._query_output(responses[index]))
            index += 1
        read = responses[index]
        status = self._status(read)
        if status == STATUS_END_OF_FILE:
            data = b""
        elif status:
            return SourceFile(path, status, "READ", info, sd, b"", stream_list)
        else:
            data = self._read_data(read)
        status = self._status(responses[index + 1])
        if status:
            return SourceFile(path, status, "CLOSE", info, sd, data, stream_list)
        return SourceFile(path, 0, "", info, sd, data, stream_list, self._close_info(responses[index + 1]))

    # --- small files: destination side --------------------------------------------------
    def write_small_files(
        self,
        items: Iterable[DestFile],
        *,
        replace: bool = True,
        read_back: bool = False,
        sacl: bool = False,
        backup_intent: bool = False,
        depth: int = 32,
    ) -> Iterator[WriteResult]:
        """Write each item under a temporary name, rename it into place, set its metadata.

        Per file two compounds: CREATE(temp, SD as ``SecD`` context) + WRITE; then — only if
        both succeeded — SET_INFO rename (``replace`` = ReplaceIfExists) + SET_INFO
        FileBasicInformation + CLOSE with post-query, whose times/attributes/size are the
        result's ``info``. (Times and attributes go after the rename because Samba sets
        ARCHIVE when renaming.) A file whose data did not fully arrive is never renamed:
        its temporary file is deleted and the result carries the NTSTATUS. Data must fit
        one WRITE (``max_write_size``). ``read_back`` reads the data back in the first
        compound and renames only if it came back identical (else STATUS_DATA_ERROR,
        command "verify"); ``sacl`` lets the ``SecD`` context carry a SACL. Yields one
        WriteResult per item, in completion order.
        """
        options = FILE_NON_DIRECTORY_FILE | (FILE_OPEN_FOR_BACKUP_INTENT if backup_intent else 0)
        access = DEST_ACCESS | (FILE_READ_DATA if read_back else 0) | (ACCESS_SYSTEM_SECURITY if sacl else 0)
        inflight: deque[_Op] = deque()
        source = iter(items)
        exhausted = False
        while True:
            while not exhausted and len(inflight) < depth:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                if len(item.data) > self._max_write:
                    raise ValueError(f"{item.path}: {len(item.data)} bytes exceed one WRITE; use write_range")
                write_charge = _credit_charge(len(item.data)) if item.data else 0
                verify = read_back and bool(item.data)
                temp = item.temp_path or item.path + ".sms-partial"
                create = self._create_body(
                    temp, access, FILE_OVERWRITE_IF, options, 0, FILE_ATTRIBUTE_NORMAL, item.security
                )
                create_charge = self._charge(len(create))  # over 1 only with an SD near 64 KiB
                self._reserve(create_charge + write_charge * (2 if verify else 1))
                messages = [(CMD_CREATE, create, create_charge)]
                if item.data:
                    messages.append((CMD_WRITE, self._write_body(RELATED_FILE_ID, item.data, 0), write_charge))
                if verify:
                    messages.append((CMD_READ, self._read_body(RELATED_FILE_ID, len(item.data), 0), write_charge))
                inflight.append(self._send_chain(messages, ("write", item, temp)))
            if not inflight:
                return
            op = inflight[0]
            while op.left:
                self._pump()
            inflight.popleft()
            stage, item, temp = op.context[:3]
            if stage == "write":
                follow = self._dest_commit(op, item, temp, replace)
            elif stage == "commit":
                follow = self._dest_result(op, item, temp, options)
            else:  # "cleanup": the temporary file is gone (or could not be removed)
                follow = op.context[3]
            if isinstance(follow, WriteResult):
                yield follow
            else:
                inflight.appendleft(follow)

    def _dest_commit(self, op: _Op, item: DestFile, temp: str, replace: bool):
        """After CREATE + WRITE: rename + set basic info + close, or delete the temp file."""
        responses = op.responses
        status = self._status(responses[0])
        if status:
            return WriteResult(item.path, status, "CREATE", None)
        _, file_id = self._create_info(responses[0])
        failed = None
        if item.data:
            status = self._status(responses[1])
            if status:
                failed = WriteResult(item.path, status, "WRITE", None)
            elif _WRITE_RESP.unpack_from(responses[1], 64)[0] != len(item.data):
                failed = WriteResult(item.path, 0xC000007F, "WRITE", None)  # short write: STATUS_DISK_FULL
            elif len(responses) > 2 and (self._status(responses[2]) or self._read_data(responses[2]) != item.data):
                failed = WriteResult(item.path, STATUS_DATA_ERROR, "verify", None)
        self._reserve(3)
        if failed is not None:
            dispose = self._set_body(file_id, INFO_FILE, FILE_DISPOSITION_INFORMATION, b"\x01")
            messages = [(CMD_SET_INFO, dispose, 1), (CMD_CLOSE, self._close_body(RELATED_FILE_ID), 1)]
            return self._send_chain(messages, ("cleanup", item, temp, failed))
        rename = self._set_body(file_id, INFO_FILE, FILE_RENAME_INFORMATION, self._rename_buffer(item.path, replace))
        basic = self._basic_buffer(
            item.creation_time, item.last_access_time, item.last_write_time, item.change_time, item.attributes
        )
        messages = [
            (CMD_SET_INFO, rename, 1),
            (CMD_SET_INFO, self._set_body(RELATED_FILE_ID, INFO_FILE, FILE_BASIC_INFORMATION, basic), 1),
            (CMD_CLOSE, self._close_body(RELATED_FILE_ID, True), 1),
        ]
        return self._send_chain(messages, ("commit", item, temp))

    def _dest_result(self, op: _Op, item: DestFile, temp: str, options: int):
        """After rename + basic info + close: the result, or a cleanup of a failed rename."""
        rename, basic, close = op.responses
        status = self._status(rename)
        if status:
            failed = WriteResult(item.path, status, "SET_INFO rename", None)
            self._reserve(2)
            create = self._create_body(
                temp, DELETE, FILE_OPEN, options | FILE_DELETE_ON_CLOSE, SHARE_READ_WRITE_DELETE
            )
            messages = [(CMD_CREATE, create, 1), (CMD_CLOSE, self._close_body(RELATED_FILE_ID), 1)]
            return self._send_chain(messages, ("cleanup", item, temp, failed))
        for message, name in ((basic, "SET_INFO basic"), (close, "CLOSE")):
            status = self._status(message)
            if status:
                return WriteResult(item.path, status, name, None)
        return WriteResult(item.path, 0, "", self._close_info(close))

    # --- single handles and large files -------------------------------------------------
    def _call(self, messages: list[tuple[int, bytes, int]], path: str, names: list[str]) -> list:
        self._reserve(sum(charge for _, _, charge in messages))
        responses = self._wait(self._send_chain(messages, None))
        for message, name in zip(responses, names):
            status = self._status(message)
            if status:
                raise FastPathError(status, path, name)
        return responses

    def open(
        self,
        path: str,
        access: int = SOURCE_ACCESS,
        disposition: int = FILE_OPEN,
        *,
        options: int = FILE_NON_DIRECTORY_FILE,
        share: int = SHARE_READ_WRITE_DELETE,
        attributes: int = 0,
        security: bytes | None = None,
    ) -> Handle:
        """Open (or create) ``path``; raises FastPathError with the NTSTATUS on failure."""
        body = self._create_body(path, access, disposition, options, share, attributes, security)
        (response,) = self._call([(CMD_CREATE, body, self._charge(len(body)))], path, ["CREATE"])
        info, file_id = self._create_info(response)
        return Handle(file_id, path, info, int.from_bytes(response[68:72], "little"))

    def close(self, handle: Handle, *, query: bool = True) -> FileInfo | None:
        """Close ``handle``; returns the file's final times, size and attributes (None with
        ``query=False``, which a handle marked delete-on-close needs: Samba 4.17 panics on
        a post-query CLOSE of a deleted directory stream)."""
        handle.closed = True
        (response,) = self._call([(CMD_CLOSE, self._close_body(handle.file_id, query), 1)], handle.path, ["CLOSE"])
        return self._close_info(response) if query else None

    def query_security(
        self, handle: Handle, additional: int = SECINFO_OWNER_GROUP_DACL, *, max_length: int = 65535
    ) -> bytes:
        """The SD parts named by ``additional`` (default owner, group and DACL) of ``handle``
        as self-relative SD bytes.

        A descriptor larger than ``max_length`` (possible from about 64 KiB: a DACL near the
        64 KiB ACL limit plus owner and group, or a large SACL) is answered with
        STATUS_BUFFER_TOO_SMALL and the size it needs; it is asked for again with that
        output buffer (and the credit charge a buffer over 64 KiB takes), at most up to the
        server's max_transact_size.
        """
        while True:
            charge = self._charge(max_length)
            body = self._query_security_body(handle.file_id, max_length, additional)
            self._reserve(charge)
            (response,) = self._wait(self._send_chain([(CMD_QUERY_INFO, body, charge)], None))
            status = self._status(response)
            if status in (STATUS_BUFFER_TOO_SMALL, STATUS_BUFFER_OVERFLOW):
                needed = self._needed_length(response, max_length)
                if max_length < needed <= self._max_transact:
                    max_length = needed
                    continue
            if status:
                raise FastPathError(status, handle.path, "QUERY_INFO security")
            return self._query_output(response)

    def set_security(self, handle: Handle, security: bytes, additional: int = SECINFO_OWNER_GROUP_DACL) -> None:
        """Set the SD parts named by ``additional`` (default owner|group|DACL) on ``handle``
        (a descriptor over 64 KiB is sent with the credit charge its size takes)."""
        body = self._set_body(handle.file_id, INFO_SECURITY, 0, security, additional)
        self._call([(CMD_SET_INFO, body, self._charge(len(security)))], handle.path, ["SET_INFO security"])

    def set_basic_info(
        self, handle: Handle, creation_time: int, last_access_time: int, last_write_time: int,
        change_time: int, attributes: int,
    ) -> None:
        """Set raw FILETIME times (0 = unchanged) and attributes (0 sent as NORMAL)."""
        buffer = self._basic_buffer(creation_time, last_access_time, last_write_time, change_time, attributes)
        body = self._set_body(handle.file_id, INFO_FILE, FILE_BASIC_INFORMATION, buffer)
        self._call([(CMD_SET_INFO, body, 1)], handle.path, ["SET_INFO basic"])

    def rename(self, handle: Handle, target: str, replace: bool = True) -> None:
        """Rename the open file to ``target`` (relative to the share); needs DELETE access."""
        body = self._set_body(handle.file_id, INFO_FILE, FILE_RENAME_INFORMATION, self._rename_buffer(target, replace))
        self._call([(CMD_SET_INFO, body, 1)], handle.path, ["SET_INFO rename"])
        handle.path = target

    def delete_on_close(self, handle: Handle) -> None:
        """Mark the open file for deletion when it is closed; needs DELETE access."""
        body = self._set_body(handle.file_id, INFO_FILE, FILE_DISPOSITION_INFORMATION, b"\x01")
        self._call([(CMD_SET_INFO, body, 1)], handle.path, ["SET_INFO disposition"])

    def set_end_of_file(self, handle: Handle, size: int) -> None:
        """Set the file's end of file (its size) to ``size``; needs FILE_WRITE_DATA."""
        body = self._set_body(handle.file_id, INFO_FILE, FILE_END_OF_FILE_INFORMATION, struct.pack("<q", size))
        self._call([(CMD_SET_INFO, body, 1)], handle.path, ["SET_INFO end of file"])

    def query_streams(self, handle: Handle) -> list[tuple[str, int]]:
        """The alternate data streams of the open file or directory, as (":name:$DATA", size).

        Samba answers STATUS_END_OF_FILE for a directory without streams: that is "none".
        """
        body = _QUERY.pack(41, INFO_FILE, FILE_STREAM_INFORMATION, 65535, 0, 0, 0, 0, 0, handle.file_id, 0)
        self._reserve(1)
        (response,) = self._wait(self._send_chain([(CMD_QUERY_INFO, body, 1)], None))
        status = self._status(response)
        if status == STATUS_END_OF_FILE:
            return []
        if status:
            raise FastPathError(status, handle.path, "QUERY_INFO streams")
        return self._streams(self._query_output(response))

    def ioctl(self, handle: Handle, code: int, data: bytes = b"", max_output: int = 0) -> bytes:
        """Send FSCTL ``code`` with input ``data`` on ``handle``; returns its output bytes."""
        charge = _credit_charge(max(len(data), max_output))
        body = _IOCTL.pack(
            57, 0, code, handle.file_id, 120 if data else 0, len(data), 0, 0, 0, max_output, IOCTL_IS_FSCTL, 0
        ) + data
        (response,) = self._call([(CMD_IOCTL, body, charge)], handle.path, ["IOCTL"])
        fields = _IOCTL_RESP.unpack_from(response, 64)
        offset, length = fields[6], fields[7]
        return bytes(response[offset : offset + length])

    def list_directory(self, path: str, *, chunk: int = 65536) -> dict[str, FileInfo]:
        """Every entry of directory ``path`` (name exactly as the server has it -> FileInfo),
        '.' and '..' left out. Raises FastPathError (e.g. STATUS_OBJECT_NAME_NOT_FOUND)."""
        handle = self.open(path, FILE_LIST_DIRECTORY | FILE_READ_ATTRIBUTES | SYNCHRONIZE,
                           options=FILE_DIRECTORY_FILE)
        found: dict[str, FileInfo] = {}
        pattern = "*".encode("utf-16-le")
        body = _QUERY_DIR.pack(
            33, FILE_ID_FULL_DIRECTORY_INFORMATION, 0, 0, handle.file_id, 96, len(pattern), chunk
        ) + pattern
        try:
            while True:
                self._reserve(1)
                (response,) = self._wait(self._send_chain([(CMD_QUERY_DIRECTORY, body, 1)], None))
                status = self._status(response)
                if status in (STATUS_NO_MORE_FILES, STATUS_NO_SUCH_FILE):
                    return found
                if status:
                    raise FastPathError(status, path, "QUERY_DIRECTORY")
                buffer = self._query_output(response)
                offset = 0
                while len(buffer) - offset >= _DIR_ENTRY.size:
                    (next_entry, _index, ctime, atime, mtime, chtime, eof, alloc, attributes,
                     name_length, _ea) = _DIR_ENTRY.unpack_from(buffer, offset)
                    start = offset + _DIR_ENTRY.size
                    name = buffer[start : start + name_length].decode("utf-16-le", "surrogatepass")
                    if name not in (".", ".."):
                        found[name] = FileInfo(ctime, atime, mtime, chtime, alloc, eof, attributes)
                    if not next_entry:
                        break
                    offset += next_entry
        finally:
            self.close(handle)

    def stat_files(self, paths: Iterable[str], *, depth: int = 32) -> Iterator[tuple[str, int, FileInfo | None]]:
        """(path, NTSTATUS, FileInfo or None) of each path (file or directory), pipelined:
        one CREATE(read attributes) + CLOSE compound per path, results in the order given."""
        close_body = self._close_body(RELATED_FILE_ID)
        inflight: deque[_Op] = deque()
        source = iter(paths)
        exhausted = False
        while True:
            while not exhausted and len(inflight) < depth:
                path = next(source, None)
                if path is None:
                    exhausted = True
                    break
                self._reserve(2)
                create = self._create_body(path, FILE_READ_ATTRIBUTES, FILE_OPEN, 0, SHARE_READ_WRITE_DELETE)
                inflight.append(self._send_chain([(CMD_CREATE, create, 1), (CMD_CLOSE, close_body, 1)], path))
            if not inflight:
                return
            op = inflight.popleft()
            create, _close = self._wait(op)
            status = self._status(create)
            yield op.context, status, None if status else self._create_info(create)[0]

    def read_range(
        self, handle: Handle, offset: int, length: int, *, chunk: int = 1 << 20, depth: int = 8
    ) -> Iterator[bytes]:
        """Read ``length`` bytes from ``offset`` as pipelined READs of ``chunk`` bytes.

        Yields the data in file order (a shorter final piece at end of file, then stops);
        up to ``depth`` READs are in flight. Raises FastPathError on an NTSTATUS failure.
        """
        chunk = max(1, min(chunk, self._max_read))
        end = offset + length
        next_offset = offset
        inflight: deque[_Op] = deque()
        while True:
            while next_offset < end and len(inflight) < depth:
                size = min(chunk, end - next_offset)
                charge = _credit_charge(size)
                self._reserve(charge)
                body = self._read_body(handle.file_id, size, next_offset)
                inflight.append(self._send_chain([(CMD_READ, body, charge)], size))
                next_offset += size
            if not inflight:
                return
            op = inflight.popleft()
            (response,) = self._wait(op)
            status = self._status(response)
            if status == STATUS_END_OF_FILE:
                data = b""
            elif status:
                self._drain(inflight)
                raise FastPathError(status, handle.path, "READ")
            else:
                data = self._read_data(response)
            if data:
                yield data
            if len(data) < op.context:  # end of file: nothing further to read
                self._drain(inflight)
                return

    def write_range(
        self, handle: Handle, chunks: Iterable[bytes], offset: int = 0, *, depth: int = 8
    ) -> int:
        """Write ``chunks`` back to back from ``offset`` as pipelined WRITEs; returns bytes written.

        A chunk given as ``(position, data)`` is written at ``position`` and the next
        plain chunk follows it (so runs of zeros can be left out of a new file).
        Each chunk must fit ``max_write_size``. Up to ``depth`` WRITEs are in flight.
        Raises FastPathError on an NTSTATUS failure or a short write.
        """
        inflight: deque[_Op] = deque()
        position = offset
        written = 0
        failure: FastPathError | None = None
        source = iter(chunks)
        exhausted = False
        while True:
            while failure is None and not exhausted and len(inflight) < depth:
                data = next(source, None)
                if data is None:
                    exhausted = True
                    break
                if type(data) is tuple:
                    position, data = data
                if len(data) > self._max_write:
                    failure = FastPathError(0xC000000D, handle.path, "WRITE")  # STATUS_INVALID_PARAMETER
                    break
                if not data:
                    continue
                charge = _credit_charge(len(data))
                self._reserve(charge)
                inflight.append(
                    self._send_chain([(CMD_WRITE, self._write_body(handle.file_id, data, position), charge)], len(data))
                )
                position += len(data)
            if not inflight:
                break
            op = inflight.popleft()
            (response,) = self._wait(op)
            status = self._status(response)
            if status:
                failure = failure or FastPathError(status, handle.path, "WRITE")
            elif _WRITE_RESP.unpack_from(response, 64)[0] != op.context:
                failure = failure or FastPathError(0xC000007F, handle.path, "WRITE")  # short write
            else:
                written += op.context
        if failure is not None:
            raise failure
        return written

    def _drain(self, inflight: deque) -> None:
        while inflight:
            self._wait(inflight.popleft())
