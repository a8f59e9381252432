"""Server and share facts over DCE/RPC (srvsvc on \\pipe\\srvsvc), through impacket.

What an inventory needs that SMB2 alone cannot give: the list of a server's shares with
type, remark and local path (NetrShareEnum levels 1 and 2), a share's own security
descriptor as raw bytes (NetrShareGetInfo level 502), and the server's name, platform,
version and type (NetrServerGetInfo levels 101 and 102), plus the OS name the server
announced during NTLM logon. Results are plain dataclasses.

Failures are typed so an administrator knows what to fix: ``ServerUnreachable`` (no
answer or connection refused), ``LogonFailed`` (wrong account or password),
``SigningNotAvailable`` (the session would not be signed), ``RpcAccessDenied`` (logged on,
but the call is not allowed to this account), ``ShareNotFound``.

This module must never turn SMB signing off: a session that is not signed is closed and
refused. It must never put the password in a log line, an exception or a repr, and it
never changes anything on the server (read-only calls only).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from impacket import nmb
from impacket.dcerpc.v5 import srvs, transport
from impacket.dcerpc.v5.rpcrt import DCERPCException
from impacket.nt_errors import ERROR_MESSAGES as NT_ERROR_MESSAGES
from impacket.smbconnection import SessionError, SMBConnection
from impacket.system_errors import ERROR_MESSAGES as WIN32_ERROR_MESSAGES

from common.smb.errors import SmbError

# Share types (MS-SRVS 2.2.2.4).
STYPE_DISKTREE = 0x0
STYPE_PRINTQ = 0x1
STYPE_DEVICE = 0x2
STYPE_IPC = 0x3
STYPE_MASK = 0xFF
STYPE_TEMPORARY = 0x40000000
STYPE_SPECIAL = 0x80000000
_KINDS = {STYPE_DISKTREE: "disk", STYPE_PRINTQ: "printer", STYPE_DEVICE: "device", STYPE_IPC: "ipc"}

# NTSTATUS codes of a session setup that reached the server but was refused.
_LOGON_FAILURES = frozenset({
    0xC000006D,  # STATUS_LOGON_FAILURE
    0xC000006A,  # STATUS_WRONG_PASSWORD
    0xC0000064,  # STATUS_NO_SUCH_USER
    0xC0000072,  # STATUS_ACCOUNT_DISABLED
    0xC0000234,  # STATUS_ACCOUNT_LOCKED_OUT
    0xC0000071,  # STATUS_PASSWORD_EXPIRED
    0xC000006E,  # STATUS_ACCOUNT_RESTRICTION
})
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_NAME = 123  # what Samba answers for an unknown share name
NERR_NET_NAME_NOT_FOUND = 2310  # what Windows answers


class RpcError(SmbError):
    """A srvsvc call to ``host`` failed; ``code`` and ``code_name`` say how."""

    def __init__(self, host: str, message: str, code: int = 0, code_name: str = ""):
        self.host = host
        self.code = code
        self.code_name = code_name
        self.message = message
        detail = f" ({code_name}, 0x{code:08X})" if code_name else ""
        super().__init__(f"{host}: {message}{detail}")


class ServerUnreachable(RpcError):
    """No SMB server answered at the address (refused, timed out, no route)."""


class LogonFailed(RpcError):
    """The server answered but refused the account (wrong user or password, disabled ...)."""


class SigningNotAvailable(RpcError):
    """The session could not be signed; we refuse to talk unsigned."""


class RpcAccessDenied(RpcError):
    """Logged on, but the account may not make this call (e.g. level 2/502 needs admin)."""


class ShareNotFound(RpcError):
    """The server has no share of that name."""


@dataclass(frozen=True)
class ShareInfo:
    """A share as NetrShareEnum reports it. ``path`` and the use counts are None at level 1."""

    name: str
    type: int
    remark: str
    path: str | None = None
    max_uses: int | None = None
    current_uses: int | None = None

    @property
    def kind(self) -> str:
        """'disk', 'printer', 'device' or 'ipc'."""
        return _KINDS.get(self.type & STYPE_MASK, "unknown")

    @property
    def is_special(self) -> bool:
        """True for administrative shares (IPC$, ADMIN$, C$ ...)."""
        return bool(self.type & STYPE_SPECIAL)


@dataclass(frozen=True)
class ShareSecurity:
    """A share's level-502 facts: its path and its own (share-level) security descriptor."""

    name: str
    type: int
    remark: str
    path: str
    security_descriptor: bytes = field(repr=False)


@dataclass(frozen=True)
class ServerInfo:
    """Who the server says it is (NetrServerGetInfo) and the OS it announced at logon."""

    name: str
    platform_id: int
    version_major: int
    version_minor: int
    server_type: int
    comment: str
    os_name: str
    dns_host_name: str
    user_path: str | None = None


def _text(value) -> str:
    """An NDR string without its terminating NUL ('' for a NULL pointer)."""
    if value is None or isinstance(value, int):
        return ""
    return str(value).rstrip("\x00")


class SrvsvcClient:
    """A signed SMB session to ``host`` with the srvsvc pipe bound; read-only calls.

    Use as a context manager. Raises ``ServerUnreachable``, ``LogonFailed`` or
    ``SigningNotAvailable`` from the constructor.
    """

    def __init__(self, host: str, username: str, password: str, domain: str = "",
                 port: int = 445, timeout: float = 10.0):
        self.host = host
        try:
            self._smb = SMBConnection(host, host, sess_port=port, timeout=timeout)
        except (OSError, nmb.NetBIOSError, nmb.NetBIOSTimeout, SessionError) as exc:
            raise ServerUnreachable(host, f"no SMB server answered on port {port}: "
                                          f"{type(exc).__name__}: {exc}") from None
        try:
            self._smb.login(username, password, domain)
        except SessionError as exc:
            self._close_smb()
            code = exc.getErrorCode()
            name = NT_ERROR_MESSAGES.get(code, (f"0x{code:08X}",))[0]
            if code in _LOGON_FAILURES:
                raise LogonFailed(host, f"logon as {domain + chr(92) if domain else ''}"
                                        f"{username} refused", code, name) from None
            raise RpcError(host, "session setup failed", code, name) from None
        except (OSError, nmb.NetBIOSError, nmb.NetBIOSTimeout) as exc:
            self._close_smb()
            raise ServerUnreachable(host, f"connection lost during logon: {type(exc).__name__}") from None
        if not self._smb.isSigningRequired():
            self._close_smb()
            raise SigningNotAvailable(host, "the server did not agree to sign the session")
        try:
            rpc_transport = transport.SMBTransport(host, filename=r"\srvsvc", smb_connection=self._smb)
            self._dce = rpc_transport.get_dce_rpc()
            self._dce.connect()
            self._dce.bind(srvs.MSRPC_UUID_SRVS)
        except (DCERPCException, SessionError, OSError) as exc:
            self._close_smb()
            raise self._translate(exc, r"open \pipe\srvsvc") from None

    # --- calls ---------------------------------------------------------------------------
    def list_shares(self, level: int = 2) -> list[ShareInfo]:
        """Every share of the server: level 1 (name, type, remark; any account) or level 2
        (also path and use counts; needs an administrator on most servers)."""
        if level not in (1, 2):
            raise ValueError("NetrShareEnum level must be 1 or 2")
        shares: list[ShareInfo] = []
        resume = 0
        while True:
            try:
                response = srvs.hNetrShareEnum(self._dce, level, resumeHandle=resume)
            except (DCERPCException, SessionError, OSError) as exc:
                raise self._translate(exc, f"NetrShareEnum level {level}") from None
            buffer = response["InfoStruct"]["ShareInfo"][f"Level{level}"]["Buffer"]
            entries = [] if buffer in (None, 0) else list(buffer)
            for entry in entries:
                if level == 1:
                    shares.append(ShareInfo(_text(entry["shi1_netname"]), int(entry["shi1_type"]),
                                            _text(entry["shi1_remark"])))
                else:
                    shares.append(ShareInfo(
                        _text(entry["shi2_netname"]), int(entry["shi2_type"]),
                        _text(entry["shi2_remark"]), _text(entry["shi2_path"]),
                        int(entry["shi2_max_uses"]), int(entry["shi2_current_uses"])))
            resume = int(response["ResumeHandle"] or 0)
            if not entries or len(shares) >= int(response["TotalEntries"]) or not resume:
                return shares

    def share_security(self, name: str) -> ShareSecurity:
        """A share's path and raw share-level security descriptor (NetrShareGetInfo 502)."""
        try:
            response = srvs.hNetrShareGetInfo(self._dce, name + "\x00", 502)
        except (DCERPCException, SessionError, OSError) as exc:
            raise self._translate(exc, f"NetrShareGetInfo 502 for share {name!r}", share=name) from None
        info = response["InfoStruct"]["ShareInfo502"]
        raw = info["shi502_security_descriptor"]
        descriptor = b"" if raw in (None, 0) else b"".join(
            part if isinstance(part, bytes) else bytes([part]) for part in raw)
        return ShareSecurity(_text(info["shi502_netname"]), int(info["shi502_type"]),
                             _text(info["shi502_remark"]), _text(info["shi502_path"]), descriptor)

    def server_info(self, level: int = 101) -> ServerInfo:
        """The server's name, platform, version, type and comment (level 101), plus the
        user path at level 102 (needs an administrator); with the OS and DNS host name
        the server announced at logon."""
        if level not in (101, 102):
            raise ValueError("NetrServerGetInfo level must be 101 or 102")
        try:
            response = srvs.hNetrServerGetInfo(self._dce, level)
        except (DCERPCException, SessionError, OSError) as exc:
            raise self._translate(exc, f"NetrServerGetInfo {level}") from None
        info = response["InfoStruct"][f"ServerInfo{level}"]
        prefix = f"sv{level}_"
        return ServerInfo(
            name=_text(info[prefix + "name"]),
            platform_id=int(info[prefix + "platform_id"]),
            version_major=int(info[prefix + "version_major"]),
            version_minor=int(info[prefix + "version_minor"]),
            server_type=int(info[prefix + "type"]),
            comment=_text(info[prefix + "comment"]),
            os_name=_text(self._smb.getServerOS()),
            dns_host_name=_text(self._smb.getServerDNSHostName()),
            user_path=_text(info["sv102_userpath"]) if level == 102 else None,
        )

    # --- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Unbind and log off; errors on the way out are ignored."""
        dce = getattr(self, "_dce", None)
        if dce is not None:
            try:
                dce.disconnect()
            except (DCERPCException, SessionError, OSError):
                pass
            self._dce = None
        self._close_smb()

    def _close_smb(self) -> None:
        smb = getattr(self, "_smb", None)
        if smb is not None:
            try:
                smb.close()
            except (SessionError, OSError, nmb.NetBIOSError):
                pass
            self._smb = None

    def __enter__(self) -> "SrvsvcClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _translate(self, exc: BaseException, action: str, share: str | None = None) -> RpcError:
        """The typed error for an impacket failure during ``action`` (about ``share``)."""
        if isinstance(exc, (socket.timeout, ConnectionError, nmb.NetBIOSError, nmb.NetBIOSTimeout)):
            return ServerUnreachable(self.host, f"{action}: connection lost ({type(exc).__name__})")
        if isinstance(exc, SessionError):
            code = exc.getErrorCode()
            name = NT_ERROR_MESSAGES.get(code, (f"0x{code:08X}",))[0]
            if code == 0xC0000022:
                return RpcAccessDenied(self.host, f"{action} denied", code, name)
            return RpcError(self.host, f"{action} failed", code, name)
        if isinstance(exc, DCERPCException):
            code = exc.get_error_code() or 0
            name = WIN32_ERROR_MESSAGES.get(code, (str(exc),))[0] if code else str(exc)
            if code == ERROR_ACCESS_DENIED or "access_denied" in str(exc).lower():
                return RpcAccessDenied(self.host, f"{action} denied", code, name or "ERROR_ACCESS_DENIED")
            if share is not None and code in (NERR_NET_NAME_NOT_FOUND, ERROR_INVALID_NAME):
                return ShareNotFound(self.host, f"{action}: no such share", code, name)
            return RpcError(self.host, f"{action} failed", code, name)
        return ServerUnreachable(self.host, f"{action}: {type(exc).__name__}")


__all__ = [
    "LogonFailed", "RpcAccessDenied", "RpcError", "ServerInfo", "ServerUnreachable",
    "ShareInfo", "ShareNotFound", "ShareSecurity", "SigningNotAvailable", "SrvsvcClient",
    "STYPE_DISKTREE", "STYPE_IPC", "STYPE_SPECIAL",
]
