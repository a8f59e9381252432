"""The WinRM host adapter: parsers on recorded PowerShell 5.1 output, and the transport guard.

No Windows host can run here. tests/data/winrm/*.json are the outputs of the adapter's
scripts in the exact shape Windows PowerShell 5.1's ConvertTo-Json prints (CRLF, enums as
integers, one-item results as bare objects, /Date(ms)/ dates, \\u0026-style escapes);
each file is named after the script that produces it. The transport guard and the error
mapping run against real pywinrm: refused configurations never reach the network, and a
secure configuration pointed at a loopback address where nothing listens fails as
HostUnreachable without the password in the message.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from orchestrator.hosts import HostUnreachable, InsecureTransport
from orchestrator.hosts.windows_winrm import (
    SCRIPTS,
    WindowsWinRmHost,
    load_ps_json,
    parse_identity,
    parse_local_principals,
    parse_network,
    parse_shares,
    parse_volumes,
    ps_datetime,
)
from tests.lab.samba import reserve_loopback_address

DATA = Path(__file__).parent / "data" / "winrm"


def recorded(name: str) -> bytes:
    """A recorded output as pywinrm hands it over: bytes, CRLF line ends."""
    return (DATA / f"{name}.json").read_bytes()


def test_every_script_has_a_recording_and_ends_in_convertto_json():
    assert {p.stem for p in DATA.glob("*.json")} == set(SCRIPTS)
    for script in SCRIPTS.values():
        assert script.endswith("| ConvertTo-Json -Depth 4")
    for name in ("operating_system", "computer_system"):
        assert "Get-CimInstance -ClassName Win32_" in SCRIPTS[name]
    assert SCRIPTS["ip_configuration"].startswith("Get-NetIPConfiguration")
    for prop in ("FolderEnumerationMode", "CachingMode", "ContinuouslyAvailable", "EncryptData",
                 "ConcurrentUserLimit", "ScopeName", "ShareType", "Special", "Temporary",
                 "SecurityDescriptor", "Description", "Path"):
        assert prop in SCRIPTS["shares"]
    assert "Get-SmbShareAccess" in SCRIPTS["share_access"]
    assert "Get-LocalGroupMember" in SCRIPTS["local_groups"]
    assert b"\r\n" in recorded("shares")


def test_identity_of_a_domain_member():
    identity = parse_identity(recorded("operating_system"), recorded("computer_system"))
    assert identity.hostname == "fs01"
    assert identity.netbios_name == "FS01"
    assert identity.fqdn == "fs01.corp.example.com"
    assert identity.domain == "corp.example.com"
    assert identity.part_of_domain is True and identity.workgroup is None
    assert identity.os_name == "Microsoft Windows Server 2019 Standard"
    assert identity.os_version == "10.0.17763"


def test_network_single_adapter_is_a_bare_object():
    adapters = parse_network(recorded("ip_configuration"), recorded("ip_addresses"))
    assert len(adapters) == 1
    nic = adapters[0]
    assert nic.name == "Ethernet0" and nic.mac_address == "00:50:56:a1:2b:3c"
    assert nic.gateways == ["192.0.2.1"]
    assert nic.dns_servers == ["192.0.2.10", "192.0.2.11", "2001:db8::53"]
    assert nic.dhcp is False
    assert [(a.address, a.prefix_length, a.family) for a in nic.addresses] == [
        ("fe80::8d4:5c1a:2b3c:4d5e", 64, "ipv6"),
        ("192.0.2.20", 24, "ipv4"),
        ("192.0.2.21", 24, "ipv4"),
    ]


def test_volumes():
    volumes = {v.mount_point: v for v in parse_volumes(recorded("volumes"))}
    assert volumes["C:\\"].filesystem == "NTFS" and volumes["C:\\"].size_bytes == 85311843840
    assert volumes["D:\\"].filesystem == "ReFS" and volumes["D:\\"].label == "Data"
    assert volumes["D:\\"].free_bytes == 412316860416
    recovery = next(v for v in volumes.values() if v.label == "Recovery")
    assert recovery.mount_point.startswith("\\\\?\\Volume{")


def test_shares_with_every_property_and_access():
    shares = {s.name: s for s in parse_shares(recorded("shares"), recorded("share_access"))}
    finance = shares["Finance"]
    assert finance.path == "D:\\Shares\\Finance"
    assert finance.description == "Finance & Payroll <confidential>"
    assert finance.folder_enumeration_mode == "AccessBased"
    assert finance.caching_mode == "Documents"
    assert finance.encrypt_data is True and finance.continuously_available is False
    assert finance.concurrent_user_limit == 25
    assert finance.share_type == "disk" and finance.special is False and finance.temporary is False
    assert finance.sddl.startswith("O:BAG:DUD:(A;;FA;;;BA)")
    assert finance.properties["CurrentUsers"] == 3 and finance.properties["LeasingMode"] == 0
    assert [(a.trustee, a.access_type, a.right) for a in finance.access] == [
        ("BUILTIN\\Administrators", "Allow", "Full"),
        ("CORP\\Finance Users", "Allow", "Change"),
        ("CORP\\Contractors", "Deny", "Full"),
    ]
    assert shares["IPC$"].share_type == "ipc" and shares["IPC$"].special is True
    assert shares["IPC$"].path is None and shares["IPC$"].sddl is None
    assert shares["C$"].special is True
    projects = shares["Projects"]
    assert projects.scope_name == "FS01-ALT" and projects.caching_mode == "None"
    assert projects.folder_enumeration_mode == "Unrestricted" and projects.description is None
    assert [(a.trustee, a.right) for a in projects.access] == [("Everyone", "Read")]


def test_local_principals_dates_escapes_and_member_errors():
    principals = parse_local_principals(recorded("local_users"), recorded("local_groups"))
    users = {u.name: u for u in principals.users}
    admin = users["Administrator"]
    assert admin.sid.endswith("-500") and admin.enabled is True
    assert admin.password_last_set == datetime.fromtimestamp(1699990000, timezone.utc)
    assert admin.last_logon == datetime.fromtimestamp(1700003600, timezone.utc)
    assert users["Guest"].enabled is False and users["Guest"].password_last_set is None
    assert users["svc_scan"].full_name == "Scanner 'Kopierer' Konto"
    groups = {g.name: g for g in principals.groups}
    admins = groups["Administrators"]
    assert admins.sid == "S-1-5-32-544"
    assert [(m.name, m.object_class, m.source) for m in admins.members] == [
        ("FS01\\Administrator", "User", "Local"),
        ("CORP\\Domain Admins", "Group", "ActiveDirectory"),
    ]
    assert [m.sid for m in groups["Scanner Operators"].members] == [users["svc_scan"].sid]
    assert groups["Scanner Operators"].description == "Accounts that drop scans into \\\\FS01\\Scans"
    assert groups["Remote Desktop Users"].members == [] and groups["Remote Desktop Users"].members_error is None
    assert groups["Users"].members_error == "Failed to compare two elements in the array."


def test_powershell_json_shapes():
    assert load_ps_json(b"", "empty") == []  # an empty pipeline prints nothing
    assert load_ps_json(b"\xef\xbb\xbf{\r\n    \"a\":  1\r\n}\r\n", "bom") == [{"a": 1}]
    assert load_ps_json('{"value": [{"a": 1}], "Count": 1}', "wrapped") == [{"a": 1}]
    assert ps_datetime("/Date(-62135596800000)/").year == 1
    assert ps_datetime({"value": "/Date(1700000000000)/", "DisplayHint": 2}) == datetime.fromtimestamp(
        1700000000, timezone.utc
    )
    assert ps_datetime(None) is None
    with pytest.raises(ValueError):
        load_ps_json(b"<html>proxy error</html>", "garbage")


@pytest.mark.parametrize(
    "options",
    [
        {"transport": "basic"},
        {"transport": "plaintext"},
        {"transport": "ssl"},
        {"transport": "ntlm", "use_https": False, "encrypt_messages": False},
    ],
)
def test_transport_guard_refuses_plaintext(options):
    with pytest.raises(InsecureTransport) as caught:
        WindowsWinRmHost("fs01.corp.example.com", username="CORP\\mig", password="S3cret-pw", **options)
    assert "S3cret-pw" not in str(caught.value)
    assert "fs01.corp.example.com" in str(caught.value)


def test_secure_configurations():
    https = WindowsWinRmHost("fs01.corp.example.com", username="CORP\\mig", password="S3cret-pw")
    transport = https._session.protocol.transport
    assert https.endpoint == "https://fs01.corp.example.com:5986/wsman"
    assert transport.auth_method == "ntlm" and transport.server_cert_validation == "validate"
    http = WindowsWinRmHost(
        "fs01.corp.example.com", username="CORP\\mig", password="S3cret-pw", use_https=False
    )
    assert http.endpoint == "http://fs01.corp.example.com:5985/wsman"
    assert http._session.protocol.transport.message_encryption == "always"


def test_unreachable_endpoint_is_typed_and_keeps_the_password_out():
    address, lock = reserve_loopback_address()  # nothing listens there
    try:
        for use_https in (True, False):
            host = WindowsWinRmHost(
                address, username="mig", password="S3cret-pw", use_https=use_https, operation_timeout=5
            )
            with pytest.raises(HostUnreachable) as caught:
                host.identity()
            assert "S3cret-pw" not in str(caught.value)
            assert address in str(caught.value)
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/8", "dev", "lo"], capture_output=True)
        lock.close()
