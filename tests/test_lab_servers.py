"""The lab's file servers are real: bytes written over SMB land on disk and read back
identical through another client, NT security descriptors persist, instances are
independent, and a stopped instance leaves no process behind."""

from __future__ import annotations

import os
import subprocess

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)
import smbclient
from smbprotocol.exceptions import SMBException

from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER


def _auth_file(tmp_path):
    path = tmp_path / "smb-auth"
    path.write_text(f"username = {MIGRATION_USER}\npassword = {MIGRATION_PASSWORD}\n")
    path.chmod(0o600)
    return path


def _smbcacls(server, tmp_path, *args):
    return subprocess.run(
        ["smbcacls", "-s", str(server.conf), "-A", str(_auth_file(tmp_path)), "--client-protection=sign",
         f"//{server.address}/data", *args],
        capture_output=True, text=True, check=True,
    ).stdout


def test_bytes_written_over_smb_read_back_identical(samba_factory, tmp_path):
    server = samba_factory("real")
    payload = os.urandom(3 * 1024 * 1024 + 17)
    smbclient.register_session(server.address, username=MIGRATION_USER,
                               password=MIGRATION_PASSWORD, require_signing=True)
    unc = rf"\\{server.address}\data\dir one\blob.bin"
    smbclient.mkdir(rf"\\{server.address}\data\dir one")
    with smbclient.open_file(unc, "wb") as handle:
        handle.write(payload)
    # On disk, through the filesystem.
    assert (server.shares["data"].path / "dir one" / "blob.bin").read_bytes() == payload
    # Through Samba's own C client, a second independent SMB implementation.
    fetched = tmp_path / "fetched.bin"
    subprocess.run(
        ["smbclient", "-s", str(server.conf), "-A", str(_auth_file(tmp_path)),
         f"//{server.address}/data", "-c", f'get "dir one/blob.bin" {fetched}'],
        capture_output=True, check=True,
    )
    assert fetched.read_bytes() == payload
    with smbclient.open_file(unc, "rb") as handle:
        assert handle.read() == payload


def test_security_descriptor_round_trips_and_is_stored_as_nt_acl(samba_factory, tmp_path):
    server = samba_factory("acl")
    target = server.shares["data"].path / "secured.txt"
    target.write_bytes(b"secret")
    acl = "REVISION:1,OWNER:S-1-5-32-544,GROUP:S-1-5-32-545," \
          "ACL:S-1-5-32-544:ALLOWED/0x0/FULL,ACL:S-1-1-0:ALLOWED/0x0/READ"
    _smbcacls(server, tmp_path, "secured.txt", "--set", acl, "--numeric")
    shown = _smbcacls(server, tmp_path, "secured.txt", "--numeric")
    assert "OWNER:S-1-5-32-544" in shown and "GROUP:S-1-5-32-545" in shown
    assert "ACL:S-1-1-0:0/0x0/0x001200a9" in shown  # 0 = ACCESS_ALLOWED, 0x1200a9 = READ
    assert "ACL:S-1-5-32-544:0/0x0/0x001f01ff" in shown  # FULL
    # acl_xattr keeps the NT ACL in an extended attribute on the real file.
    assert "security.NTACL" in os.listxattr(target)


def test_instances_are_independent(samba_factory):
    first, second = samba_factory("one"), samba_factory("two")
    assert first.address != second.address
    for server in (first, second):
        smbclient.register_session(server.address, username=MIGRATION_USER,
                                   password=MIGRATION_PASSWORD, require_signing=True)
    with smbclient.open_file(rf"\\{first.address}\data\only-here.txt", "wb") as handle:
        handle.write(b"1")
    assert smbclient.listdir(rf"\\{second.address}\data") == []
    assert smbclient.listdir(rf"\\{first.address}\data") == ["only-here.txt"]


def test_wrong_password_is_refused(samba_factory):
    server = samba_factory("auth")
    smbclient.reset_connection_cache()
    try:
        smbclient.register_session(server.address, username=MIGRATION_USER,
                                   password="wrong-password", require_signing=True)
    except SMBException as exc:
        assert "LOGON_FAILURE" in str(exc) or "0xc000006d" in str(exc).lower()
    else:
        raise AssertionError("a wrong password was accepted")


def test_stop_leaves_no_daemon_behind(samba_factory):
    server = samba_factory("stop")
    pids = server.pids()
    assert pids, "smbd wrote no pid file"
    server.stop()
    for pid in pids:
        stat = f"/proc/{pid}/stat"
        assert not os.path.exists(stat) or open(stat).read().split(")")[-1].split()[0] == "Z"
