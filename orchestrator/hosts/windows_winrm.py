"""Windows Server, managed over WinRM: the host adapter for Windows sources.

Runs PowerShell through pywinrm and reads the JSON that Windows PowerShell 5.1's
``ConvertTo-Json -Depth 4`` prints: enums as integers, a one-item result as a bare
object rather than an array, dates as ``"\\/Date(1700000000000)\\/"``, ``&``/``<``/``'``
escaped as ``\\u0026``-style sequences. The scripts (``SCRIPTS``) are read-only:
Win32_OperatingSystem, Win32_ComputerSystem, Get-NetIPConfiguration, Get-NetIPAddress,
Get-Volume, Get-SmbShare, Get-SmbShareAccess, Get-LocalUser, Get-LocalGroup and
Get-LocalGroupMember.

As a destination it creates folders and shares (``ensure_directory``, ``create_share``)
with the scripts of ``windows_shares``; nothing else changes the host.

Transport: NTLM, Kerberos or CredSSP only, over HTTPS with the server certificate
validated by default, or over HTTP with WinRM message encryption forced on. Basic or
plaintext authentication, and unencrypted HTTP, are refused with ``InsecureTransport``
before anything is sent. The password goes to pywinrm's authentication handler only:
never into a script, a log or an exception.

No Windows host can run in this project's lab: the parsers are tested against recorded
outputs in the exact PowerShell 5.1 shape (tests/data/winrm/), and docs/windows-adapter.md
lists what is unverified against a real server.
"""

from __future__ import annotations

import importlib.util
import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import requests
import winrm
from winrm.exceptions import InvalidCredentialsError, WinRMError, WinRMOperationTimeoutError, WinRMTransportError

from orchestrator.hosts.base import (
    AuthenticationFailed,
    CommandFailed,
    HostAdapter,
    HostKeyUnknown,
    HostUnreachable,
    InsecureTransport,
    ShareExists,
    ShareRejected,
    UnexpectedOutput,
)
from orchestrator.hosts.facts import (
    GroupMember,
    HostIdentity,
    IpAddress,
    LocalGroup,
    LocalPrincipals,
    LocalUser,
    NetworkAdapter,
    ShareAccessEntry,
    ShareCreation,
    ShareFacts,
    Volume,
)

SECURE_TRANSPORTS = {"ntlm", "kerberos", "credssp"}
# The Python package each authentication needs besides pywinrm itself.
TRANSPORT_PACKAGES = {"ntlm": "requests_ntlm", "kerberos": "kerberos", "credssp": "requests_credssp"}

# Every script starts with this: stop on the first error, no progress records, UTF-8
# output without BOM, and no System.Array type data (which makes 5.1 wrap arrays as
# {"value": [...], "Count": n}).
PREAMBLE = (
    "$ErrorActionPreference = 'Stop'\n"
    "$ProgressPreference = 'SilentlyContinue'\n"
    "[Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false\n"
    "Remove-TypeData System.Array -ErrorAction SilentlyContinue\n"
)
JSON = " | ConvertTo-Json -Depth 4"

SHARE_PROPERTIES = (
    "Name, Path, Description, FolderEnumerationMode, CachingMode, ContinuouslyAvailable, "
    "EncryptData, ConcurrentUserLimit, CurrentUsers, ScopeName, ShareType, ShareState, Special, "
    "Temporary, Volume, AvailabilityType, CATimeout, LeasingMode, CompressData, SecurityDescriptor"
)

SCRIPTS: dict[str, str] = {
    "operating_system": "Get-CimInstance -ClassName Win32_OperatingSystem | Select-Object "
    "Caption, Version, BuildNumber, OSArchitecture, CSName, LastBootUpTime" + JSON,
    "computer_system": "Get-CimInstance -ClassName Win32_ComputerSystem | Select-Object "
    "Name, DNSHostName, Domain, PartOfDomain, Workgroup, DomainRole" + JSON,
    "ip_configuration": "Get-NetIPConfiguration -All | ForEach-Object { [pscustomobject]@{ "
    "InterfaceAlias = $_.InterfaceAlias; InterfaceIndex = $_.InterfaceIndex; "
    "InterfaceDescription = $_.InterfaceDescription; MacAddress = $_.NetAdapter.MacAddress; "
    "IPv4DefaultGateway = @($_.IPv4DefaultGateway | ForEach-Object { $_.NextHop }); "
    "IPv6DefaultGateway = @($_.IPv6DefaultGateway | ForEach-Object { $_.NextHop }); "
    "DNSServer = @($_.DNSServer | ForEach-Object { $_.ServerAddresses }); "
    "Dhcp = $_.NetIPv4Interface.Dhcp } }" + JSON,
    "ip_addresses": "Get-NetIPAddress | Select-Object "
    "InterfaceIndex, InterfaceAlias, IPAddress, PrefixLength, AddressFamily, PrefixOrigin, SuffixOrigin"
    + JSON,
    "volumes": "Get-Volume | Select-Object "
    "@{n='DriveLetter';e={if ($_.DriveLetter) { [string]$_.DriveLetter } else { $null }}}, "
    "Path, FileSystemLabel, FileSystem, DriveType, HealthStatus, Size, SizeRemaining" + JSON,
    "shares": f"Get-SmbShare | Select-Object {SHARE_PROPERTIES}" + JSON,
    "share_access": "Get-SmbShare | Get-SmbShareAccess | Select-Object "
    "Name, ScopeName, AccountName, AccessControlType, AccessRight" + JSON,
    "local_users": "Get-LocalUser | Select-Object Name, @{n='SID';e={$_.SID.Value}}, Enabled, "
    "FullName, Description, PasswordLastSet, LastLogon, PrincipalSource" + JSON,
    "local_groups": "Get-LocalGroup | ForEach-Object { $group = $_; $members = @(); $failure = $null; "
    "try { $members = @(Get-LocalGroupMember -Group $group | Select-Object Name, "
    "@{n='SID';e={$_.SID.Value}}, ObjectClass, PrincipalSource) } "
    "catch { $failure = $_.Exception.Message }; "
    "[pscustomobject]@{ Name = $group.Name; SID = $group.SID.Value; Description = $group.Description; "
    "Members = $members; MembersError = $failure } }" + JSON,
}

FOLDER_ENUMERATION_MODE = {0: "AccessBased", 1: "Unrestricted"}
CACHING_MODE = {0: "None", 1: "Manual", 2: "Documents", 3: "Programs", 4: "BranchCache", 5: "Unknown"}
SHARE_TYPE = {0: "disk", 1: "printer", 2: "device", 3: "ipc"}
SHARE_TYPE_NAMES = {
    "FileSystemDirectory": "disk",
    "PrintQueue": "printer",
    "CommunicationDevice": "device",
    "InterprocessCommunication": "ipc",
}
ACCESS_CONTROL_TYPE = {0: "Allow", 1: "Deny"}
ACCESS_RIGHT = {0: "Full", 1: "Change", 2: "Read", 3: "Custom"}
ADDRESS_FAMILY = {2: "ipv4", 23: "ipv6", "IPv4": "ipv4", "IPv6": "ipv6"}
PREFIX_ORIGIN_DHCP = (3, "Dhcp")
DHCP_STATE = {0: False, 1: True, "Disabled": False, "Enabled": True}
PRINCIPAL_SOURCE = {0: "Unknown", 1: "Local", 2: "ActiveDirectory", 3: "AzureAD", 4: "MicrosoftAccount"}
DOMAIN_ROLE_MEMBER = {1, 3, 4, 5}
_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")


def check_transport(transport: str, use_https: bool, encrypt_messages: bool) -> str:
    """The pywinrm message_encryption setting for a secure configuration, or InsecureTransport.

    Allowed: NTLM, Kerberos or CredSSP over HTTPS, or over HTTP with message encryption.
    """
    if transport not in SECURE_TRANSPORTS:
        raise InsecureTransport(
            "winrm",
            f"WinRM transport {transport!r} is refused: use ntlm, kerberos or credssp "
            "(basic and plaintext would expose the credentials)",
        )
    if use_https:
        return "auto"  # TLS protects the messages; pywinrm adds no second layer
    if not encrypt_messages:
        raise InsecureTransport(
            "winrm",
            "WinRM over HTTP without message encryption is refused: use HTTPS (port 5986) "
            "or keep message encryption on",
        )
    return "always"


def json_items(value: Any) -> list:
    """PowerShell 5.1 JSON as a list: null -> [], a bare object -> [object], an array as is."""
    if value is None:
        return []
    if isinstance(value, dict) and set(value) == {"value", "Count"} and isinstance(value["value"], list):
        return value["value"]  # array wrapped by System.Array type data
    if isinstance(value, list):
        return value
    return [value]


def load_ps_json(text: str | bytes, what: str) -> list:
    """Parse ConvertTo-Json output (possibly empty, possibly with a BOM) into a list of items."""
    if isinstance(text, bytes):
        text = text.decode("utf-8-sig")
    text = text.lstrip("\ufeff").strip()
    if not text:
        return []
    try:
        return json_items(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ValueError(f"output of {what} is not JSON: {exc}") from None


def ps_datetime(value: Any) -> datetime | None:
    """A PowerShell 5.1 JSON date (``/Date(ms)/`` or its ``{"value": ...}`` form) as UTC."""
    if isinstance(value, dict):
        value = value.get("value")
    if not isinstance(value, str):
        return None
    match = _DATE.match(value)
    if not match:
        return None
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=int(match.group(1)))


def _enum(value: Any, table: dict) -> Any:
    if value is None:
        return None
    return table.get(value, value)


def parse_identity(os_json: str, cs_json: str) -> HostIdentity:
    """HostIdentity from Win32_OperatingSystem and Win32_ComputerSystem JSON."""
    os_items = load_ps_json(os_json, "Win32_OperatingSystem")
    cs_items = load_ps_json(cs_json, "Win32_ComputerSystem")
    if not os_items or not cs_items:
        raise ValueError("Win32_OperatingSystem or Win32_ComputerSystem returned nothing")
    os_info, cs = os_items[0], cs_items[0]
    part_of_domain = bool(cs.get("PartOfDomain"))
    domain = cs.get("Domain") if part_of_domain else None
    dns_host = cs.get("DNSHostName") or cs.get("Name")
    return HostIdentity(
        hostname=dns_host,
        fqdn=f"{dns_host}.{domain}" if domain else dns_host,
        domain=domain,
        netbios_name=cs.get("Name"),
        workgroup=cs.get("Workgroup") if not part_of_domain else None,
        part_of_domain=part_of_domain,
        os_name=os_info.get("Caption"),
        os_version=os_info.get("Version"),
    )


def parse_network(config_json: str, addresses_json: str) -> list[NetworkAdapter]:
    """Adapters from the Get-NetIPConfiguration projection, prefixes from Get-NetIPAddress."""
    addresses: dict[Any, list[IpAddress]] = {}
    for item in load_ps_json(addresses_json, "Get-NetIPAddress"):
        addresses.setdefault(item.get("InterfaceIndex"), []).append(
            IpAddress(
                address=item["IPAddress"].split("%")[0],
                prefix_length=int(item["PrefixLength"]),
                family=_enum(item.get("AddressFamily"), ADDRESS_FAMILY),
                dhcp=item.get("PrefixOrigin") in PREFIX_ORIGIN_DHCP,
            )
        )
    adapters = []
    for item in load_ps_json(config_json, "Get-NetIPConfiguration"):
        mac = item.get("MacAddress")
        adapters.append(
            NetworkAdapter(
                name=item.get("InterfaceAlias"),
                mac_address=mac.replace("-", ":").lower() if mac else None,
                addresses=addresses.get(item.get("InterfaceIndex"), []),
                gateways=[g for g in json_items(item.get("IPv4DefaultGateway")) + json_items(item.get("IPv6DefaultGateway")) if g],
                dns_servers=[d for d in json_items(item.get("DNSServer")) if d],
                dhcp=_enum(item.get("Dhcp"), DHCP_STATE),
                description=item.get("InterfaceDescription"),
                loopback="loopback" in (item.get("InterfaceDescription") or "").lower(),
            )
        )
    return adapters


def parse_volumes(volumes_json: str) -> list[Volume]:
    """Volumes from Get-Volume: drive letter (or volume path), filesystem, size, free."""
    volumes = []
    for item in load_ps_json(volumes_json, "Get-Volume"):
        letter = item.get("DriveLetter")
        volumes.append(
            Volume(
                mount_point=f"{letter}:\\" if letter else item.get("Path"),
                filesystem=item.get("FileSystem") or None,
                size_bytes=item.get("Size"),
                free_bytes=item.get("SizeRemaining"),
                device=item.get("Path"),
                label=item.get("FileSystemLabel") or None,
            )
        )
    return volumes


def parse_shares(shares_json: str, access_json: str) -> list[ShareFacts]:
    """Shares from Get-SmbShare (every selected property kept) with Get-SmbShareAccess entries."""
    access: dict[tuple, list[ShareAccessEntry]] = {}
    for item in load_ps_json(access_json, "Get-SmbShareAccess"):
        access.setdefault((item.get("ScopeName"), item.get("Name")), []).append(
            ShareAccessEntry(
                trustee=item.get("AccountName"),
                access_type=_enum(item.get("AccessControlType"), ACCESS_CONTROL_TYPE),
                right=_enum(item.get("AccessRight"), ACCESS_RIGHT),
            )
        )
    shares = []
    for item in load_ps_json(shares_json, "Get-SmbShare"):
        share_type = item.get("ShareType")
        shares.append(
            ShareFacts(
                name=item["Name"],
                path=item.get("Path") or None,
                description=item.get("Description") or None,
                share_type=SHARE_TYPE.get(share_type, SHARE_TYPE_NAMES.get(share_type, share_type)),
                special=bool(item.get("Special")),
                temporary=item.get("Temporary"),
                folder_enumeration_mode=_enum(item.get("FolderEnumerationMode"), FOLDER_ENUMERATION_MODE),
                caching_mode=_enum(item.get("CachingMode"), CACHING_MODE),
                continuously_available=item.get("ContinuouslyAvailable"),
                encrypt_data=item.get("EncryptData"),
                concurrent_user_limit=item.get("ConcurrentUserLimit"),
                scope_name=item.get("ScopeName"),
                properties=dict(item),
                sddl=item.get("SecurityDescriptor") or None,
                access=access.get((item.get("ScopeName"), item["Name"]), []),
            )
        )
    return shares


def parse_local_principals(users_json: str, groups_json: str) -> LocalPrincipals:
    """Local users (Get-LocalUser) and groups with members (Get-LocalGroup/-Member)."""
    users = [
        LocalUser(
            name=item["Name"],
            sid=item.get("SID"),
            enabled=item.get("Enabled"),
            full_name=item.get("FullName") or None,
            description=item.get("Description") or None,
            password_last_set=ps_datetime(item.get("PasswordLastSet")),
            last_logon=ps_datetime(item.get("LastLogon")),
        )
        for item in load_ps_json(users_json, "Get-LocalUser")
    ]
    groups = []
    for item in load_ps_json(groups_json, "Get-LocalGroup"):
        groups.append(
            LocalGroup(
                name=item["Name"],
                sid=item.get("SID"),
                description=item.get("Description") or None,
                members=[
                    GroupMember(
                        name=member.get("Name"),
                        sid=member.get("SID"),
                        object_class=member.get("ObjectClass"),
                        source=_enum(member.get("PrincipalSource"), PRINCIPAL_SOURCE),
                    )
                    for member in json_items(item.get("Members"))
                ],
                members_error=item.get("MembersError") or None,
            )
        )
    return LocalPrincipals(users=users, groups=groups)


class WindowsWinRmHost(HostAdapter):
    """A Windows Server reached over WinRM (pywinrm), read with PowerShell.

    ``transport`` is ntlm (default), kerberos or credssp. HTTPS (port 5986) with the
    certificate checked against ``ca_bundle`` (or the system's CAs) is the default;
    ``verify_certificate=False`` must be asked for explicitly. ``use_https=False``
    talks HTTP on port 5985 with WinRM message encryption always on.
    ``path_acl_from_share`` makes ``create_share`` also run Set-SmbPathAcl (off by
    default: the transfer gives the share's folder the source root's own security).
    """

    def __init__(
        self,
        host: str,
        *,
        username: str,
        password: str,
        transport: str = "ntlm",
        use_https: bool = True,
        port: int | None = None,
        verify_certificate: bool = True,
        ca_bundle: str | None = None,
        encrypt_messages: bool = True,
        operation_timeout: int = 60,
        path_acl_from_share: bool = False,
    ):
        try:
            message_encryption = check_transport(transport, use_https, encrypt_messages)
        except InsecureTransport as exc:
            raise InsecureTransport(host, str(exc).split(": ", 1)[1]) from None
        package = TRANSPORT_PACKAGES[transport]
        if importlib.util.find_spec(package) is None:
            raise ValueError(
                f"WinRM transport {transport!r} needs the Python package {package!r}, which is not "
                f"installed (pip install 'pywinrm[{transport}]')"
            )
        self.host = host
        self.path_acl_from_share = path_acl_from_share
        self.transport = transport
        scheme = "https" if use_https else "http"
        self.endpoint = f"{scheme}://{host}:{port or (5986 if use_https else 5985)}/wsman"
        self._session = winrm.Session(
            self.endpoint,
            auth=(username, password),
            transport=transport,
            message_encryption=message_encryption,
            server_cert_validation="validate" if verify_certificate else "ignore",
            ca_trust_path=ca_bundle,
            operation_timeout_sec=operation_timeout,
            read_timeout_sec=operation_timeout + 10,
        )

    def run_script(self, name: str, body: str | None = None) -> str:
        """Run one of ``SCRIPTS`` (or ``body``, named ``name`` in errors) after the preamble
        and return its standard output (UTF-8 JSON text)."""
        script = PREAMBLE + (SCRIPTS[name] if body is None else body)
        try:
            response = self._session.run_ps(script)
        except requests.exceptions.SSLError as exc:
            raise HostKeyUnknown(
                self.host, f"TLS certificate of the WinRM endpoint could not be verified: {_reason(exc)}"
            ) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise HostUnreachable(self.host, f"WinRM endpoint {self.endpoint} did not answer: {_reason(exc)}") from None
        except InvalidCredentialsError:
            raise AuthenticationFailed(self.host, "WinRM refused the credentials (HTTP 401)") from None
        except WinRMOperationTimeoutError:
            raise HostUnreachable(self.host, f"WinRM operation timed out while running {name}") from None
        except WinRMTransportError as exc:
            raise HostUnreachable(self.host, f"WinRM answered HTTP {exc.code} while running {name}") from None
        except WinRMError as exc:
            raise HostUnreachable(self.host, f"WinRM error while running {name}: {exc}") from None
        if response.status_code != 0:
            raise CommandFailed(
                self.host, f"PowerShell script {name}", response.status_code, response.std_err.decode("utf-8", "replace")
            )
        return response.std_out.decode("utf-8-sig", "replace")

    def _parse(self, parser, *scripts: str):
        """Run the scripts and hand their outputs to the parser; bad output -> UnexpectedOutput."""
        outputs = [self.run_script(name) for name in scripts]
        try:
            return parser(*outputs)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UnexpectedOutput(self.host, f"{', '.join(scripts)}: unexpected output: {exc!r}") from None

    def identity(self) -> HostIdentity:
        """Computer name, DNS name, domain or workgroup, OS caption and version."""
        return self._parse(parse_identity, "operating_system", "computer_system")

    def network(self) -> list[NetworkAdapter]:
        """Adapters from Get-NetIPConfiguration with prefixes from Get-NetIPAddress."""
        return self._parse(parse_network, "ip_configuration", "ip_addresses")

    def volumes(self) -> list[Volume]:
        """Volumes from Get-Volume."""
        return self._parse(parse_volumes, "volumes")

    def shares(self) -> list[ShareFacts]:
        """Get-SmbShare with every property SMS captures, plus Get-SmbShareAccess."""
        return self._parse(parse_shares, "shares", "share_access")

    def local_principals(self) -> LocalPrincipals:
        """Get-LocalUser, Get-LocalGroup and each group's Get-LocalGroupMember."""
        return self._parse(parse_local_principals, "local_users", "local_groups")

    def ensure_directory(self, path: str) -> bool:
        """Create folder ``path`` and its parents unless it exists; True if created."""
        from orchestrator.hosts import windows_shares  # it builds on this module

        try:
            body = windows_shares.ensure_directory_script(path)
        except ValueError as exc:
            raise ShareRejected(self.host, str(exc)) from None
        output = self.run_script("ensure_directory", body)
        try:
            return windows_shares.parse_ensure_directory_output(output)
        except (ValueError, KeyError, TypeError) as exc:
            raise UnexpectedOutput(self.host, f"ensure_directory: unexpected output: {exc!r}") from None

    def create_share(self, share: ShareFacts, path: str, *, replace: bool = False) -> ShareCreation:
        """Create (or with ``replace`` update) the share with New-SmbShare / Set-SmbShare and
        its permissions with Grant-/Block-SmbShareAccess (orchestrator/hosts/windows_shares.py).
        Unverified against a real Windows server."""
        from orchestrator.hosts import windows_shares  # it builds on this module

        try:
            body, notes = windows_shares.create_share_script(
                share, path, replace=replace, path_acl_from_share=self.path_acl_from_share
            )
        except ValueError as exc:
            raise ShareRejected(self.host, f"share {share.name!r}: {exc}") from None
        output = self.run_script("create_share", body)
        try:
            action, existing_path, created = windows_shares.parse_create_share_output(output)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UnexpectedOutput(self.host, f"create_share: unexpected output: {exc!r}") from None
        if action == "exists":
            raise ShareExists(self.host, share.name, existing_path)
        return ShareCreation(name=share.name, path=path, action=action, notes=notes, share=created)

    def close(self) -> None:
        """Drop the HTTP session pywinrm keeps."""
        self._session.protocol.transport.close_session()


def _reason(exc: Exception) -> str:
    """The innermost reason of a requests error, without the URL's query or credentials."""
    reason = exc.args[0] if exc.args else exc
    return str(getattr(reason, "reason", reason))
