"""Any SMB server without management access: identity and shares over srvsvc RPC.

For a source that offers nothing but SMB (a NAS, an appliance, a server whose admins
give no SSH or WinRM), the inventory still learns the server's name and OS
(NetrServerGetInfo 101 and the NTLM logon announcement) and every share with its type,
remark, path, user limit and share-level security descriptor (NetrShareEnum level 2,
NetrShareGetInfo 502), through ``common.smb.rpc`` (impacket, signed sessions only).

Network adapters, volumes and local principals cannot be known this way: those methods
raise ``ManagementUnavailable`` with a message saying so, never an empty guess. When the
account may not use level 2 or 502 (not an administrator of the server), the share list
falls back to level 1 and the missing facts stay ``None``. This adapter never changes
the server and never puts the password in an error.
"""

from __future__ import annotations

from impacket.ldap.ldaptypes import SR_SECURITY_DESCRIPTOR

from common.smb.rpc import (
    STYPE_SPECIAL,
    LogonFailed,
    RpcAccessDenied,
    RpcError,
    ServerUnreachable,
    SigningNotAvailable,
    SrvsvcClient,
)
from orchestrator.hosts.base import (
    AuthenticationFailed,
    CommandFailed,
    HostAdapter,
    HostUnreachable,
    InsecureTransport,
    ManagementUnavailable,
    UnexpectedOutput,
)
from orchestrator.hosts.facts import HostIdentity, LocalPrincipals, NetworkAdapter, ShareAccessEntry, ShareFacts, Volume

STYPE_TEMPORARY = 0x40000000
UNLIMITED_USES = 0xFFFFFFFF
# Share-permission masks: Windows' Full/Change/Read, and Samba's CHANGE.
SHARE_RIGHTS = {0x001F01FF: "Full", 0x001301BF: "Change", 0x001301FF: "Change", 0x001200A9: "Read"}
ACE_TYPES = {0x00: "Allow", 0x01: "Deny"}


def parse_share_descriptor(descriptor: bytes) -> list[ShareAccessEntry]:
    """The DACL entries of a self-relative share security descriptor (impacket's parser)."""
    if not descriptor:
        return []
    try:
        sd = SR_SECURITY_DESCRIPTOR(data=descriptor)
    except Exception as exc:  # impacket raises plain struct/index errors on bad input
        raise ValueError(f"unreadable share security descriptor: {exc}") from None
    if not sd["Dacl"]:
        return []
    entries = []
    for ace in sd["Dacl"].aces:
        mask = int(ace["Ace"]["Mask"]["Mask"])
        sid = ace["Ace"]["Sid"].formatCanonical()
        entries.append(
            ShareAccessEntry(
                trustee=sid,
                access_type=ACE_TYPES.get(ace["AceType"], f"AceType{ace['AceType']}"),
                right=SHARE_RIGHTS.get(mask, "Custom"),
                mask=mask,
                sid=sid,
                flags=int(ace["AceFlags"]),
            )
        )
    return entries


class SmbOnlyHost(HostAdapter):
    """An SMB server known only through SMB: log on, ask srvsvc, nothing more."""

    def __init__(
        self,
        host: str,
        *,
        username: str,
        password: str,
        domain: str = "",
        port: int = 445,
        timeout: float = 10.0,
    ):
        self.host = host
        self.port = port
        self._username = username
        self._password = password
        self._domain = domain
        self.timeout = timeout
        self._client: SrvsvcClient | None = None

    def _srvsvc(self) -> SrvsvcClient:
        if self._client is None:
            try:
                self._client = SrvsvcClient(
                    self.host, self._username, self._password, self._domain, port=self.port, timeout=self.timeout
                )
            except Exception as exc:
                raise self._translate(exc) from None
        return self._client

    def _translate(self, exc: Exception) -> Exception:
        if isinstance(exc, ServerUnreachable):
            return HostUnreachable(self.host, exc.message)
        if isinstance(exc, LogonFailed):
            return AuthenticationFailed(self.host, f"{exc.message} ({exc.code_name})")
        if isinstance(exc, SigningNotAvailable):
            return InsecureTransport(self.host, exc.message)
        if isinstance(exc, RpcError):
            return CommandFailed(self.host, exc.message.split(":")[0], exc.code, exc.code_name or exc.message)
        return exc

    def identity(self) -> HostIdentity:
        """Name, DNS host name and OS the server gives over srvsvc and at logon."""
        try:
            info = self._srvsvc().server_info(101)
        except RpcError as exc:
            raise self._translate(exc) from None
        return HostIdentity(
            hostname=info.dns_host_name or info.name,
            fqdn=info.dns_host_name or None,
            netbios_name=info.name,
            os_name=info.os_name or None,
            os_version=f"{info.version_major}.{info.version_minor}",
        )

    def shares(self) -> list[ShareFacts]:
        """Every share (level 2, else level 1) with its share security descriptor when readable."""
        client = self._srvsvc()
        try:
            try:
                listed = client.list_shares(2)
            except RpcAccessDenied:
                listed = client.list_shares(1)
            shares = []
            for info in listed:
                descriptor = None
                path = info.path
                if info.kind == "disk":
                    try:
                        security = client.share_security(info.name)
                        descriptor = security.security_descriptor
                        path = security.path or path
                    except RpcAccessDenied:
                        descriptor = None
                try:
                    shares.append(_share(info, path, descriptor))
                except ValueError as exc:
                    raise UnexpectedOutput(self.host, f"share {info.name!r}: {exc}") from None
            return shares
        except RpcError as exc:
            raise self._translate(exc) from None

    def network(self) -> list[NetworkAdapter]:
        """Not knowable over SMB alone: raises ManagementUnavailable."""
        raise ManagementUnavailable(self.host, "SMB-only source: network adapters need SSH or WinRM access")

    def volumes(self) -> list[Volume]:
        """Not knowable over SMB alone: raises ManagementUnavailable."""
        raise ManagementUnavailable(self.host, "SMB-only source: volumes need SSH or WinRM access")

    def local_principals(self) -> LocalPrincipals:
        """Not knowable over SMB alone: raises ManagementUnavailable."""
        raise ManagementUnavailable(self.host, "SMB-only source: local users and groups need SSH or WinRM access")

    def close(self) -> None:
        """Log off the SMB session."""
        if self._client is not None:
            self._client.close()
            self._client = None


def _share(info, path: str | None, descriptor: bytes | None) -> ShareFacts:
    max_uses = info.max_uses
    return ShareFacts(
        name=info.name,
        path=path or None,
        description=info.remark or None,
        share_type=info.kind,
        special=bool(info.type & STYPE_SPECIAL),
        temporary=bool(info.type & STYPE_TEMPORARY),
        concurrent_user_limit=None if max_uses is None else (0 if max_uses == UNLIMITED_USES else max_uses),
        properties={
            "type": info.type,
            "remark": info.remark,
            "path": info.path,
            "max_uses": info.max_uses,
            "current_uses": info.current_uses,
        },
        security_descriptor=descriptor or None,
        access=parse_share_descriptor(descriptor or b""),
    )
