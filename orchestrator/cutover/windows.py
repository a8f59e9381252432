"""Cutover operations on Windows Server over WinRM: PowerShell builders, parsers, the host.

UNVERIFIED against a real Windows server: no Windows host can run in this project's lab.
The scripts below follow the documented cmdlets (Get-/New-/Remove-NetIPAddress,
Rename-Computer, Remove-Computer, Add-Computer, Restart-Computer, Get-/Set-SmbShare) and
the parsers are tested against recordings in Windows PowerShell 5.1's ``ConvertTo-Json``
shape (tests/data/winrm/cutover/); docs/cutover.md lists what must be checked on a real
server before this is relied on.

What each operation does:

- addresses: ``Get-NetIPAddress -AddressFamily IPv4``; ``New-NetIPAddress`` (Windows runs
  duplicate address detection and announces the address itself); ``Remove-NetIPAddress``;
  "is this address free" asks for its MAC with ``SendARP`` (iphlpapi), as ``arping -D``
  would;
- an address from DHCP: ``Set-NetIPInterface -Dhcp Enabled`` on the interface, then
  ``Get-NetIPAddress`` until a preferred address of prefix origin Dhcp is there (60 s at
  most); released with ``ipconfig /release`` and ``Set-NetIPInterface -Dhcp Disabled``.
  Windows keeps no static address on an interface with DHCP enabled, so pre-flight
  refuses when the management address is on that interface, and rollback releases the
  lease before the old addresses come back. The DHCP Client service must be running;
- name: ``Rename-Computer`` then ``Restart-Computer`` and a wait until WinRM answers with
  the new name. A domain member is first unjoined (``Remove-Computer``), restarted, then
  joined again under the new name (``Add-Computer -NewName``), as Storage Migration Service
  does; a destination taking the source's name thereby reuses the source's computer
  account when the account running the cutover may (Windows' join hardening, KB5020276);
- share access: the share's security descriptor (``Get-SmbShare``'s SecurityDescriptor,
  SDDL) is recorded first; read-only rewrites every allow entry to READ (0x1200a9);
  maintenance leaves only BUILTIN\\Administrators; normal puts the recorded SDDL back
  (``Set-SmbShare -SecurityDescriptor``).

Scripts never contain a credential: domain steps run as the WinRM session's own account,
which must be a domain account allowed to join and unjoin computers, over Kerberos or
CredSSP (NTLM cannot delegate it). Every value put into a script is quoted for PowerShell
(``ps_quote``) and checked first (names, addresses, interface aliases).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from typing import Any

from orchestrator.cutover.plan import MAINTENANCE, NORMAL, READ_ONLY, SHARE_MODES, netbios_name_problem
from orchestrator.hosts.base import HostError, HostUnreachable, UnexpectedOutput
from orchestrator.hosts.windows_winrm import WindowsWinRmHost, load_ps_json

JSON = " | ConvertTo-Json -Depth 4"
READ_MASK = "0x1200a9"  # FILE_GENERIC_READ | FILE_EXECUTE: what Get-SmbShareAccess calls Read
MAINTENANCE_SDDL = "O:BAG:BAD:(A;;FA;;;BA)"  # only BUILTIN\Administrators, full access
_ACE = re.compile(r"\(([^()]*)\)")


def ps_quote(value: str) -> str:
    """``value`` as a single-quoted PowerShell string (quotes doubled, no expansion)."""
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError("a PowerShell argument cannot hold a line break or NUL")
    # PowerShell ends a single-quoted string at any of these quote characters; doubling escapes it.
    return "'" + "".join(ch * 2 if ch in "'\u2018\u2019\u201a\u201b" else ch for ch in value) + "'"


def _ipv4(address: str) -> str:
    parsed = ipaddress.ip_address(address)
    if parsed.version != 4:
        raise ValueError(f"{address} is not an IPv4 address")
    return str(parsed)


def _name(name: str) -> str:
    problem = netbios_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


# --- script builders -------------------------------------------------------------------------

def script_ip_addresses() -> str:
    """IPv4 addresses with interface alias and prefix length."""
    return ("Get-NetIPAddress -AddressFamily IPv4 | Select-Object InterfaceAlias, InterfaceIndex, "
            "IPAddress, PrefixLength, PrefixOrigin" + JSON)


def script_add_address(interface: str, address: str, prefix_length: int) -> str:
    """Add a static IPv4 address to an interface (DAD and announcement are Windows' own)."""
    if not 0 < int(prefix_length) <= 32:
        raise ValueError("prefix length must be 1..32")
    return (f"New-NetIPAddress -InterfaceAlias {ps_quote(interface)} -IPAddress {ps_quote(_ipv4(address))} "
            f"-PrefixLength {int(prefix_length)} -AddressFamily IPv4 -Type Unicast | Select-Object "
            "InterfaceAlias, IPAddress, PrefixLength, AddressFamily, Store" + JSON)


def script_remove_address(interface: str, address: str) -> str:
    """Remove an IPv4 address from an interface (both the active and the persistent store)."""
    return (f"Remove-NetIPAddress -InterfaceAlias {ps_quote(interface)} -IPAddress {ps_quote(_ipv4(address))} "
            f"-Confirm:$false; [pscustomobject]@{{ Removed = {ps_quote(_ipv4(address))} }}" + JSON)


def script_arp_probe(address: str) -> str:
    """Whether anybody answers an ARP request for ``address`` (SendARP from iphlpapi)."""
    return (
        "Add-Type -Namespace SmsCutover -Name Arp -MemberDefinition "
        "'[DllImport(\"iphlpapi.dll\")] public static extern int SendARP(uint dest, uint src, byte[] mac, ref uint len);'\n"
        f"$ip = [System.Net.IPAddress]::Parse({ps_quote(_ipv4(address))})\n"
        "$mac = New-Object byte[] 6; $len = [uint32]6\n"
        "$rc = [SmsCutover.Arp]::SendARP([BitConverter]::ToUInt32($ip.GetAddressBytes(), 0), 0, $mac, [ref]$len)\n"
        "[pscustomobject]@{ Address = $ip.ToString(); Answered = ($rc -eq 0); "
        "Mac = if ($rc -eq 0) { ($mac | ForEach-Object { $_.ToString('X2') }) -join '-' } else { $null }; "
        "Code = $rc }" + JSON
    )


def script_dhcp_client() -> str:
    """The DHCP Client service (``Dhcp``) and its state."""
    return "Get-Service -Name Dhcp | Select-Object Name, Status, StartType" + JSON


def script_enable_dhcp(interface: str, wait_seconds: int = 60) -> str:
    """Enable DHCP for IPv4 on ``interface``, wait for a preferred DHCP address, list the
    interface's IPv4 addresses."""
    alias = ps_quote(interface)
    return (
        f"Set-NetIPInterface -InterfaceAlias {alias} -AddressFamily IPv4 -Dhcp Enabled\n"
        f"$deadline = (Get-Date).AddSeconds({int(wait_seconds)})\n"
        "do {\n"
        f"    $leased = @(Get-NetIPAddress -InterfaceAlias {alias} -AddressFamily IPv4 -PrefixOrigin Dhcp "
        "-ErrorAction SilentlyContinue | Where-Object { $_.AddressState -eq 'Preferred' })\n"
        "    if ($leased.Count -gt 0) { break }\n"
        "    Start-Sleep -Seconds 2\n"
        "} while ((Get-Date) -lt $deadline)\n"
        f"Get-NetIPAddress -InterfaceAlias {alias} -AddressFamily IPv4 -ErrorAction SilentlyContinue | "
        "Select-Object InterfaceAlias, IPAddress, PrefixLength, PrefixOrigin, AddressState" + JSON
    )


def script_disable_dhcp(interface: str) -> str:
    """Release the DHCP lease of ``interface`` and turn DHCP off for IPv4 there."""
    alias = ps_quote(interface)
    return (f"ipconfig /release {alias} | Out-Null\n"
            f"Set-NetIPInterface -InterfaceAlias {alias} -AddressFamily IPv4 -Dhcp Disabled\n"
            f"Get-NetIPInterface -InterfaceAlias {alias} -AddressFamily IPv4 | Select-Object InterfaceAlias, Dhcp"
            + JSON)


def script_computer() -> str:
    """The computer's NetBIOS name and domain membership."""
    return ("Get-CimInstance -ClassName Win32_ComputerSystem | Select-Object Name, Domain, PartOfDomain, Workgroup"
            + JSON)


def script_rename(new_name: str) -> str:
    """Rename the computer (takes effect at the next restart)."""
    return f"Rename-Computer -NewName {ps_quote(_name(new_name))} -Force -PassThru" + JSON


def script_unjoin(workgroup: str = "WORKGROUP") -> str:
    """Leave the domain for ``workgroup`` as the session's own account (restart needed)."""
    return f"Remove-Computer -WorkgroupName {ps_quote(_name(workgroup))} -Force -PassThru" + JSON


def script_join(domain: str, new_name: str) -> str:
    """Join ``domain`` under ``new_name`` as the session's own account (restart needed)."""
    if not re.fullmatch(r"[A-Za-z0-9.-]{1,255}", domain or ""):
        raise ValueError(f"{domain!r} is not a DNS domain name")
    return (f"Add-Computer -DomainName {ps_quote(domain)} -NewName {ps_quote(_name(new_name))} "
            "-Options JoinWithNewName -Force -PassThru" + JSON)


def script_restart() -> str:
    """Restart the computer now (the WinRM session ends with it)."""
    return "Restart-Computer -Force"


def script_share_security(shares: list[str]) -> str:
    """Name, state and security descriptor (SDDL) of the given shares."""
    names = ", ".join(ps_quote(share) for share in shares)
    return f"Get-SmbShare -Name @({names}) | Select-Object Name, ShareState, SecurityDescriptor" + JSON


def script_set_share_security(share: str, sddl: str) -> str:
    """Replace a share's permissions with ``sddl`` and print them back."""
    return (f"Set-SmbShare -Name {ps_quote(share)} -SecurityDescriptor {ps_quote(sddl)} -Force\n"
            f"Get-SmbShare -Name {ps_quote(share)} | Select-Object Name, ShareState, SecurityDescriptor" + JSON)


# --- SDDL -----------------------------------------------------------------------------------------

def read_only_sddl(sddl: str) -> str:
    """``sddl`` with every allow entry's rights reduced to read; deny entries kept."""
    def reduce(match: re.Match) -> str:
        fields = match.group(1).split(";")
        if len(fields) >= 6 and fields[0].upper() == "A":
            fields[2] = READ_MASK
        return "(" + ";".join(fields) + ")"

    return _ACE.sub(reduce, sddl)


def share_sddl_for(mode: str, original: str) -> str:
    """The share permissions for ``mode`` given the share's recorded ``original`` SDDL."""
    if mode == NORMAL:
        return original
    if mode == READ_ONLY:
        return read_only_sddl(original)
    if mode == MAINTENANCE:
        return MAINTENANCE_SDDL
    raise ValueError(f"share mode must be one of {SHARE_MODES}")


# --- parsers --------------------------------------------------------------------------------------

def parse_ip_addresses(text: str) -> dict[str, list[tuple[str, int]]]:
    """{interface alias: [(address, prefix length)]} from ``script_ip_addresses``."""
    result: dict[str, list[tuple[str, int]]] = {}
    for item in load_ps_json(text, "Get-NetIPAddress"):
        result.setdefault(item["InterfaceAlias"], []).append((item["IPAddress"], int(item["PrefixLength"])))
    return result


def parse_new_address(text: str, address: str) -> None:
    """Check New-NetIPAddress's answer (one object per store) holds ``address``."""
    items = load_ps_json(text, "New-NetIPAddress")
    if not any(item.get("IPAddress") == address for item in items):
        raise ValueError(f"New-NetIPAddress did not report {address}")


def parse_arp_probe(text: str) -> bool:
    """True when the probed address answered (it is taken)."""
    items = load_ps_json(text, "SendARP")
    if len(items) != 1 or "Answered" not in items[0]:
        raise ValueError("SendARP probe printed no answer")
    return bool(items[0]["Answered"])


# Windows PowerShell 5.1's ConvertTo-Json writes enums as numbers: PrefixOrigin Dhcp = 3,
# AddressState Preferred = 4, ServiceControllerStatus Running = 4, NetIPInterface Dhcp Enabled = 1.
_DHCP_ORIGIN, _PREFERRED, _RUNNING, _DHCP_ENABLED = (3, "Dhcp"), (4, "Preferred"), (4, "Running"), (1, "Enabled")


def parse_dhcp_client_running(text: str) -> bool:
    """True when ``script_dhcp_client`` reports the DHCP Client service running."""
    items = load_ps_json(text, "Get-Service Dhcp")
    if len(items) != 1:
        raise ValueError("Get-Service did not return the Dhcp service")
    return items[0].get("Status") in _RUNNING


def parse_dhcp_address(text: str, interface: str) -> tuple[str, int]:
    """(address, prefix length) of the preferred DHCP address ``script_enable_dhcp`` lists."""
    leased = [item for item in load_ps_json(text, "Get-NetIPAddress")
              if item.get("PrefixOrigin") in _DHCP_ORIGIN and item.get("AddressState") in _PREFERRED]
    if not leased:
        raise ValueError(f"no address from DHCP on {interface} (is a DHCP server answering there?)")
    return leased[0]["IPAddress"], int(leased[0]["PrefixLength"])


def parse_dhcp_disabled(text: str) -> None:
    """Check ``script_disable_dhcp``'s answer: DHCP is off on the interface."""
    items = load_ps_json(text, "Get-NetIPInterface")
    if len(items) != 1 or items[0].get("Dhcp") in _DHCP_ENABLED:
        raise ValueError(f"DHCP is still enabled: {items}")


def parse_computer(text: str) -> dict[str, Any]:
    """Name, domain and membership from ``script_computer``."""
    items = load_ps_json(text, "Win32_ComputerSystem")
    if len(items) != 1:
        raise ValueError("Win32_ComputerSystem did not return one computer")
    return {"name": items[0]["Name"], "domain": items[0].get("Domain"),
            "part_of_domain": bool(items[0].get("PartOfDomain"))}


def parse_change_info(text: str, what: str) -> dict[str, Any]:
    """The ``-PassThru`` object of Rename-/Add-/Remove-Computer; ValueError unless it succeeded."""
    items = load_ps_json(text, what)
    if len(items) != 1:
        raise ValueError(f"{what} -PassThru returned {len(items)} objects")
    if not items[0].get("HasSucceeded"):
        raise ValueError(f"{what} reports it did not succeed: {items[0]}")
    return items[0]


def parse_share_security(text: str) -> dict[str, dict[str, Any]]:
    """{share: {"sddl", "state"}} from ``script_share_security``; ShareState 1 is Online."""
    return {item["Name"]: {"sddl": item.get("SecurityDescriptor") or "", "state": item.get("ShareState")}
            for item in load_ps_json(text, "Get-SmbShare")}


# --- the host ---------------------------------------------------------------------------------------

class WindowsCutoverHost:
    """Cutover operations on one Windows server reached through a ``WindowsWinRmHost``.

    ``restart_timeout`` bounds the wait for WinRM after each restart.
    """

    def __init__(self, adapter: WindowsWinRmHost, name: str | None = None, *, restart_timeout: float = 900.0,
                 poll_interval: float = 10.0):
        self.adapter = adapter
        self.name = name or adapter.host
        self.restart_timeout = restart_timeout
        self.poll_interval = poll_interval

    @classmethod
    def for_server(cls, server) -> "WindowsCutoverHost":
        """The host for a stored Windows ``Server`` (WinRM options from its management)."""
        from orchestrator.jobs import management_secret, server_password

        management = server.management or {}
        adapter = WindowsWinRmHost(
            management.get("winrm_host") or server.address,
            username=management.get("winrm_user") or server.username,
            password=management_secret(server, "winrm_password") or server_password(server),
            transport=management.get("winrm_transport", "ntlm"),
            use_https=management.get("winrm_https", True),
            port=management.get("winrm_port"),
            verify_certificate=management.get("winrm_verify_certificate", True),
            ca_bundle=management.get("winrm_ca_bundle"),
        )
        return cls(adapter, server.name)

    @property
    def management_address(self) -> str:
        """Where the WinRM session goes (must not be an address that moves)."""
        return self.adapter.host

    def _run(self, what: str, script: str, parser, *args):
        output = self.adapter.run_script(what, script)
        try:
            return parser(output, *args)
        except (ValueError, KeyError, TypeError) as exc:
            raise UnexpectedOutput(self.name, f"{what}: unexpected output: {exc}") from None

    def close(self) -> None:
        """Drop the WinRM session."""
        self.adapter.close()

    def addresses(self) -> dict[str, list[tuple[str, int]]]:
        """IPv4 addresses per interface alias."""
        return self._run("Get-NetIPAddress", script_ip_addresses(), parse_ip_addresses)

    def has_address(self, address: str) -> bool:
        """True when ``address`` is on any interface."""
        return any(address == a for pairs in self.addresses().values() for a, _ in pairs)

    def add_address(self, interface: str, address: str, prefix_length: int) -> None:
        """Add ``address`` unless present (Windows announces it itself)."""
        if not self.has_address(address):
            self._run("New-NetIPAddress", script_add_address(interface, address, prefix_length),
                      parse_new_address, address)

    def remove_address(self, interface: str, address: str, prefix_length: int) -> None:
        """Remove ``address`` when present."""
        if self.has_address(address):
            self.adapter.run_script("Remove-NetIPAddress", script_remove_address(interface, address))

    def address_free(self, interface: str, address: str) -> bool:
        """True when nobody answers an ARP request for ``address``."""
        return not self._run("SendARP", script_arp_probe(address), parse_arp_probe)

    def dhcp_client_problem(self, interface: str) -> str | None:
        """Why ``interface`` cannot take an address by DHCP (service stopped, or the
        management address on it, which enabling DHCP would remove), or None."""
        if not self._run("Get-Service Dhcp", script_dhcp_client(), parse_dhcp_client_running):
            return f"the DHCP Client service (Dhcp) is not running on {self.name}"
        on_interface = {address for address, _ in self.addresses().get(interface, [])}
        try:
            managed_at = {info[4][0] for info in socket.getaddrinfo(self.management_address, None, socket.AF_INET)}
        except socket.gaierror:
            managed_at = {self.management_address}
        if managed_at & on_interface:
            return (f"{self.management_address}, the management address, is on {interface}: enabling DHCP "
                    "there would remove it; manage the server through another interface")
        return None

    def obtain_dhcp_address(self, interface: str) -> tuple[str, int]:
        """Enable DHCP on ``interface`` and return the address leased (address, prefix length)."""
        return self._run("Set-NetIPInterface -Dhcp Enabled", script_enable_dhcp(interface), parse_dhcp_address,
                         interface)

    def release_dhcp_address(self, interface: str) -> None:
        """Release the lease and turn DHCP off on ``interface``."""
        self._run("Set-NetIPInterface -Dhcp Disabled", script_disable_dhcp(interface), parse_dhcp_disabled)

    def netbios_name(self) -> str:
        """The computer name."""
        return self._run("Win32_ComputerSystem", script_computer(), parse_computer)["name"].upper()

    def rename(self, name: str, tag: str) -> None:
        """Take the computer name ``name`` (unjoin, rename, rejoin for a domain member)."""
        computer = self._run("Win32_ComputerSystem", script_computer(), parse_computer)
        if computer["name"].upper() == name.upper():
            return
        if computer["part_of_domain"]:
            self._run("Remove-Computer", script_unjoin(), parse_change_info, "Remove-Computer")
            self._restart_and_wait(None)
            self._run("Add-Computer", script_join(computer["domain"], name), parse_change_info, "Add-Computer")
        else:
            self._run("Rename-Computer", script_rename(name), parse_change_info, "Rename-Computer")
        self._restart_and_wait(name)

    def undo_rename(self, original: str, tag: str) -> None:
        """Take the name ``original`` back (the same steps as ``rename``)."""
        self.rename(original, tag)

    def _restart_and_wait(self, expected_name: str | None) -> None:
        try:
            self.adapter.run_script("Restart-Computer", script_restart())
        except HostUnreachable:
            pass  # the session may end before WinRM answers
        deadline = time.monotonic() + self.restart_timeout
        time.sleep(self.poll_interval)
        while time.monotonic() < deadline:
            try:
                name = self.netbios_name()
            except HostError:
                time.sleep(self.poll_interval)
                continue
            if expected_name is None or name == expected_name.upper():
                return
            time.sleep(self.poll_interval)
        raise HostUnreachable(self.name, f"WinRM did not come back within {self.restart_timeout:g} s after restart")

    def share_names(self) -> set[str]:
        """Names of the server's shares."""
        return {name for name in self._run("Get-SmbShare", "Get-SmbShare | Select-Object Name, ShareState, "
                                           "SecurityDescriptor" + JSON, parse_share_security)}

    def share_available(self, share: str) -> bool:
        """True when the share exists and is online."""
        found = self._run("Get-SmbShare", script_share_security([share]), parse_share_security)
        return share in found and found[share]["state"] in (1, "Online")

    def share_snapshot(self, shares: list[str]) -> dict[str, Any]:
        """The shares' SDDL, recorded before cutover changes them."""
        found = self._run("Get-SmbShare", script_share_security(shares), parse_share_security)
        return {share: found[share]["sddl"] for share in shares if share in found}

    def set_share_access(self, shares: list[str], mode: str, tag: str, allowed_hosts: list[str] | None = None,
                         snapshot: dict[str, Any] | None = None) -> None:
        """Set each share's permissions for ``mode`` from its recorded SDDL.

        Windows has no per-host share access: ``allowed_hosts`` is not used, and
        maintenance leaves only local Administrators.
        """
        snapshot = snapshot or {}
        for share in shares:
            if share not in snapshot:
                raise UnexpectedOutput(self.name, f"no recorded permissions for share {share}: run pre-flight")
            wanted = share_sddl_for(mode, snapshot[share])
            found = self._run("Set-SmbShare", script_set_share_security(share, wanted), parse_share_security)
            if share not in found:
                raise UnexpectedOutput(self.name, f"Set-SmbShare did not report share {share}")
