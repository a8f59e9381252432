"""srvsvc over a signed SMB session against real smbd: shares, their paths and security
descriptors as the test's own smb.conf and share_info.tdb declare them, server facts,
and errors that say which thing went wrong."""

from __future__ import annotations

import subprocess

import pytest
from smbprotocol.security_descriptor import SMB2CreateSDBuffer

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)
from common.smb.rpc import (
    STYPE_IPC,
    STYPE_SPECIAL,
    LogonFailed,
    ServerUnreachable,
    ShareNotFound,
    SigningNotAvailable,
    SrvsvcClient,
)
from tests.lab.fixtures import unavailable
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER, LabUnavailable, SambaServer


def _windows_path(path) -> str:
    """How Samba presents a share's Unix path over srvsvc."""
    return "C:" + str(path).replace("/", "\\")


def _aces(descriptor: bytes) -> list[tuple[int, int, int, str]]:
    sd = SMB2CreateSDBuffer()
    sd.unpack(descriptor)
    return [(ace["ace_type"].get_value(), ace["ace_flags"].get_value(), ace["mask"].get_value(),
             str(ace["sid"].get_value())) for ace in sd.get_dacl()["aces"].get_value()]


def test_shares_with_type_remark_and_path(samba_factory):
    server = samba_factory("rpc", shares=("data", "docs"))
    server.add_share("projects", comment="Project files, 2026")
    with SrvsvcClient(server.address, MIGRATION_USER, MIGRATION_PASSWORD) as client:
        shares = {share.name: share for share in client.list_shares(level=2)}
        brief = {share.name: share for share in client.list_shares(level=1)}
    assert set(shares) == set(brief) == {"data", "docs", "projects", "IPC$"}
    for name in ("data", "docs", "projects"):
        assert shares[name].path == _windows_path(server.shares[name].path)
        assert shares[name].kind == "disk" and not shares[name].is_special
        assert brief[name].path is None and brief[name].type == shares[name].type
    assert shares["projects"].remark == brief["projects"].remark == "Project files, 2026"
    assert shares["IPC$"].type == STYPE_SPECIAL | STYPE_IPC and shares["IPC$"].kind == "ipc"


def test_share_security_descriptor_as_set_with_sharesec(samba_factory):
    server = samba_factory("sharesd", shares=("data", "docs"))
    subprocess.run(["sharesec", "-s", str(server.conf), "docs", "-R",
                    "S-1-1-0:ALLOWED/0/READ,S-1-5-32-544:ALLOWED/0/FULL,S-1-5-32-546:DENIED/0/FULL"],
                   check=True, capture_output=True)
    with SrvsvcClient(server.address, MIGRATION_USER, MIGRATION_PASSWORD) as client:
        docs = client.share_security("docs")
        data = client.share_security("data")
    assert docs.path == _windows_path(server.shares["docs"].path)
    # Samba puts deny ACEs first when it stores a share ACL.
    assert sorted(_aces(docs.security_descriptor)) == sorted([
        (0, 0, 0x001200A9, "S-1-1-0"), (0, 0, 0x001F01FF, "S-1-5-32-544"),
        (1, 0, 0x001F01FF, "S-1-5-32-546")])
    # A share nobody set a descriptor on: Samba's default, Everyone full control.
    assert _aces(data.security_descriptor) == [(0, 0, 0x001F01FF, "S-1-1-0")]


def test_server_name_and_os(samba_factory):
    server = samba_factory("facts")
    with SrvsvcClient(server.address, MIGRATION_USER, MIGRATION_PASSWORD) as client:
        brief, full = client.server_info(101), client.server_info(102)
    assert brief.name == full.name == "FACTS"
    assert brief.platform_id == 500  # PLATFORM_ID_NT
    assert "Samba" in brief.comment and brief.os_name.startswith("Windows")
    assert (brief.version_major, brief.version_minor) == (full.version_major, full.version_minor)
    assert brief.user_path is None and full.user_path is not None


def test_unknown_share_is_reported_as_such(samba_factory):
    server = samba_factory("noshare")
    with SrvsvcClient(server.address, MIGRATION_USER, MIGRATION_PASSWORD) as client:
        with pytest.raises(ShareNotFound) as caught:
            client.share_security("no-such-share")
    assert "no-such-share" in str(caught.value)


def test_wrong_password_is_a_logon_failure_without_the_password(samba_factory):
    server = samba_factory("badpw")
    with pytest.raises(LogonFailed) as caught:
        SrvsvcClient(server.address, MIGRATION_USER, "Not-The-Password-42")
    assert caught.value.code_name == "STATUS_LOGON_FAILURE"
    assert MIGRATION_USER in str(caught.value)
    assert "Not-The-Password-42" not in str(caught.value) + repr(caught.value.args)


def test_unreachable_host_is_not_a_logon_failure(samba_factory):
    server = samba_factory("closed")
    server.stop()
    with pytest.raises(ServerUnreachable) as caught:
        SrvsvcClient(server.address, MIGRATION_USER, MIGRATION_PASSWORD, timeout=5)
    assert server.address in str(caught.value) and MIGRATION_PASSWORD not in str(caught.value)


def test_a_server_that_will_not_sign_is_refused(tmp_path):
    try:
        server = SambaServer("nosign", tmp_path / "nosign", extra_global={
            "server signing": "disabled", "server max protocol": "SMB3_00"})
        server.add_share("data")
        server.start()
    except LabUnavailable as exc:
        unavailable(str(exc))
    try:
        with pytest.raises(SigningNotAvailable):
            SrvsvcClient(server.address, MIGRATION_USER, MIGRATION_PASSWORD)
    finally:
        server.destroy()
