"""What a host adapter reports about a file server: plain dataclasses, nothing else.

These are the facts the inventory captures (as Storage Migration Service does) and that
transfer and cutover read back: the server's identity, its network adapters, its
volumes, its shares with every property and their share permissions, and its local
users and groups. Every adapter (Samba over SSH, Windows over WinRM, SMB only) fills the
same classes; a field an adapter cannot know is ``None``, never a guess.

This module must never talk to a host, import a database model or hold a credential.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple


@dataclass
class HostIdentity:
    """Who the server is: names, domain and operating system."""

    hostname: str
    fqdn: str | None = None
    domain: str | None = None
    netbios_name: str | None = None
    workgroup: str | None = None
    part_of_domain: bool | None = None
    os_name: str | None = None
    os_version: str | None = None


@dataclass
class IpAddress:
    """One address of an adapter with its prefix length (``10.0.0.5/24``)."""

    address: str
    prefix_length: int
    family: str  # "ipv4" or "ipv6"
    dhcp: bool | None = None


@dataclass
class NetworkAdapter:
    """A network interface and its IP configuration."""

    name: str
    mac_address: str | None = None
    addresses: list[IpAddress] = field(default_factory=list)
    gateways: list[str] = field(default_factory=list)
    dns_servers: list[str] = field(default_factory=list)
    dhcp: bool | None = None
    description: str | None = None
    loopback: bool = False


@dataclass
class Volume:
    """A mounted filesystem (Linux) or a volume (Windows) with its size and free space."""

    mount_point: str
    filesystem: str | None
    size_bytes: int | None
    free_bytes: int | None
    device: str | None = None
    label: str | None = None


@dataclass
class ShareAccessEntry:
    """One entry of a share's permissions (not the NTFS ACL of its folder).

    ``right`` is Full, Change, Read or Custom, as Get-SmbShareAccess names them;
    ``mask`` is the access mask when the source gives it.
    """

    trustee: str
    access_type: str  # "Allow" or "Deny"
    right: str
    mask: int | None = None
    sid: str | None = None
    flags: int = 0


@dataclass
class ShareFacts:
    """A share with the properties Storage Migration Service captures, and all the rest.

    ``properties`` holds every property the source reports, under the source's own
    names (smb.conf parameter names for Samba, Get-SmbShare property names for
    Windows, srvsvc field names for SMB only). ``sddl`` and ``security_descriptor``
    are the share permissions (whichever form the source gives), ``access`` their
    entries.
    """

    name: str
    path: str | None
    description: str | None = None
    share_type: str | None = None  # "disk", "printer", "device", "ipc"
    special: bool = False
    temporary: bool | None = None
    folder_enumeration_mode: str | None = None  # "AccessBased" or "Unrestricted"
    caching_mode: str | None = None  # "None", "Manual", "Documents", "Programs", "BranchCache"
    continuously_available: bool | None = None
    encrypt_data: bool | None = None
    concurrent_user_limit: int | None = None  # 0 means unlimited
    scope_name: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    sddl: str | None = None
    security_descriptor: bytes | None = None
    access: list[ShareAccessEntry] = field(default_factory=list)


@dataclass
class ShareCreation:
    """What ``HostAdapter.create_share`` did: ``action`` is "created", "updated" or
    "unchanged" (the share already was as it would have been written: nothing written).

    ``notes`` lists, for an administrator, what was not carried over as is (a parameter
    left out and why, a permission entry approximated). ``share`` is the share as the
    host reports it after the change when the adapter reads it back in the same call
    (WinRM does), else None.
    """

    name: str
    path: str
    action: str
    notes: list[str] = field(default_factory=list)
    share: ShareFacts | None = None


@dataclass
class LocalUser:
    """A local account of the server."""

    name: str
    sid: str | None = None
    enabled: bool | None = None
    full_name: str | None = None
    description: str | None = None
    unix_id: int | None = None
    password_last_set: datetime | None = None
    last_logon: datetime | None = None


@dataclass
class GroupMember:
    """A member of a local group, by name and (when known) SID."""

    name: str
    sid: str | None = None
    object_class: str | None = None  # "User" or "Group"
    source: str | None = None  # "Local", "ActiveDirectory", "Unix" ...


@dataclass
class LocalGroup:
    """A local group of the server with its members."""

    name: str
    sid: str | None = None
    description: str | None = None
    unix_id: int | None = None
    unix_name: str | None = None
    members: list[GroupMember] = field(default_factory=list)
    members_error: str | None = None  # why the members could not be read, if they could not


@dataclass
class LocalPrincipals:
    """The local users and groups of a server."""

    users: list[LocalUser] = field(default_factory=list)
    groups: list[LocalGroup] = field(default_factory=list)


class FolderSummary(NamedTuple):
    """One folder as a host's own filesystem shows it (``HostListing.folders``): the newest
    change time (ctime, ns since 1970) among its entries (0 when it has none) and their
    ``samba_host_listing.folder_digest``."""

    newest_change: int
    digest: str


@dataclass
class HostListing:
    """A share's folders as the file server's own filesystem shows them, read over the
    management channel (``HostAdapter.list_share``), not over SMB.

    ``clock`` is the server's own clock (nanoseconds since 1970) read before anything else,
    so every change made after it carries a later change time (ctime). ``path`` and
    ``refusal`` say where the share lives and, when the listing cannot stand in for an SMB
    listing, why (None when it can). ``folders`` maps each folder's SMB-style path ('' the
    share root, backslash separators) to its ``FolderSummary``; a folder holding a name
    that SMB would show differently (a backslash in it, bytes that are not UTF-8) is left
    out, and so is any folder whose path holds one. ``changed``: SMB-style path -> ctime
    of every entry changed at or after the threshold the listing was asked for. Both
    empty when only the clock was asked for.
    """

    clock: int
    path: str = ""
    refusal: str | None = None
    folders: dict[str, FolderSummary] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
