"""The SMB-only host adapter against a real smbd: srvsvc identity, shares and share SDs."""

from __future__ import annotations

import subprocess

import pytest

from orchestrator.hosts import AuthenticationFailed, HostUnreachable, ManagementUnavailable
from orchestrator.hosts.smb_only import SmbOnlyHost
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER, reserve_loopback_address


@pytest.fixture
def server(samba_factory):
    """An smbd with two shares, one with a remark, a user limit and custom share permissions."""
    server = samba_factory("smbonly", shares=("public",))
    server.add_share("finance", comment="Finance data", **{"max connections": "9"})
    subprocess.run(
        ["sharesec", "-s", str(server.conf), "finance", "-R",
         "S-1-5-32-545:DENIED/0x0/CHANGE,S-1-1-0:ALLOWED/0x0/READ,S-1-5-32-544:ALLOWED/0x0/FULL"],
        check=True, capture_output=True,
    )
    return server


def adapter(server, password=MIGRATION_PASSWORD) -> SmbOnlyHost:
    return SmbOnlyHost(server.address, username=MIGRATION_USER, password=password)


def test_identity_and_shares(server):
    with adapter(server) as host:
        identity = host.identity()
        assert identity.netbios_name == "SMBONLY"
        shares = {s.name: s for s in host.shares()}
    assert {"public", "finance", "IPC$"} <= set(shares)
    finance = shares["finance"]
    assert finance.description == "Finance data"
    # srvsvc reports a Samba path the way Windows clients expect it: C:\ and backslashes
    assert finance.path == "C:" + str(server.shares["finance"].path).replace("/", "\\")
    assert finance.share_type == "disk" and finance.special is False
    assert finance.concurrent_user_limit == 9
    assert [(a.sid, a.access_type, a.right, a.mask) for a in finance.access] == [
        ("S-1-5-32-545", "Deny", "Change", 0x001301FF),
        ("S-1-1-0", "Allow", "Read", 0x001200A9),
        ("S-1-5-32-544", "Allow", "Full", 0x001F01FF),
    ]
    assert finance.security_descriptor[:1] == b"\x01"  # self-relative, revision 1
    assert [(a.sid, a.right) for a in shares["public"].access] == [("S-1-1-0", "Full")]
    assert shares["IPC$"].share_type == "ipc" and shares["IPC$"].special is True


def test_management_facts_are_unavailable(server):
    with adapter(server) as host:
        for method in (host.network, host.volumes, host.local_principals):
            with pytest.raises(ManagementUnavailable):
                method()


def test_wrong_password(server):
    with pytest.raises(AuthenticationFailed) as caught:
        adapter(server, password="Wrong-Passw0rd").shares()
    assert "Wrong-Passw0rd" not in str(caught.value)


def test_unreachable():
    address, lock = reserve_loopback_address()
    try:
        with pytest.raises(HostUnreachable):
            SmbOnlyHost(address, username="x", password="y", timeout=3).identity()
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/8", "dev", "lo"], capture_output=True)
        lock.close()
