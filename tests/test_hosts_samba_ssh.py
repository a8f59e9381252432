"""The Samba-over-SSH host adapter against a real smbd managed over a real sshd.

A lab smbd gets shares with distinctive properties, share permissions set with
sharesec, a mapped local group and two Samba accounts (one disabled); the adapter,
logged in over the lab sshd, must report each of them exactly. The error cases use the
same sshd: wrong password, nothing listening, unknown and mismatched host keys.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time

import pytest

from orchestrator.hosts import (
    AuthenticationFailed,
    CommandFailed,
    HostKeyMismatch,
    HostKeyUnknown,
    HostUnreachable,
)
from orchestrator.hosts.samba_ssh import SambaSshHost
from tests.lab.fixtures import unavailable
from tests.lab.samba import LabUnavailable, SambaServer, reserve_loopback_address

ALICE, BOB, GROUP = "smsinvalice", "smsinvbob", "smsinvfin"
FINANCE_OPTIONS = {
    "comment": "Finance data (R&D)",
    "browseable": "no",
    "access based share enum": "yes",
    "oplocks": "no",
    "level2 oplocks": "no",
    "csc policy": "documents",
    "max connections": "7",
    "smb encrypt": "required",
    "vfs objects": "acl_xattr",
    "read only": "yes",
    "veto files": "/*.tmp/",
}


def _run(*argv: str, stdin: str | None = None) -> str:
    return subprocess.run(argv, input=stdin, text=True, capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A running smbd with the shares, permissions, users and group the tests check."""
    try:
        server = SambaServer("invsrc", tmp_path_factory.mktemp("samba-inv"))
    except LabUnavailable as exc:
        unavailable(str(exc))
    server.add_share("public")
    server.add_share("finance", **FINANCE_OPTIONS)
    server.add_share("Team Docs", comment="space in the name")
    try:
        server.start()
    except LabUnavailable as exc:
        unavailable(str(exc))
    conf = str(server.conf)
    try:
        server.add_user(ALICE, "Alice-Passw0rd!")
        server.add_user(BOB, "Bob-Passw0rd!")
        _run("pdbedit", "-s", conf, "-c", "[D]", "-u", BOB)
        if subprocess.run(["getent", "group", GROUP], capture_output=True).returncode != 0:
            _run("groupadd", "--system", GROUP)
        _run("usermod", "-aG", GROUP, ALICE)
        _run("net", "-s", conf, "groupmap", "add", "ntgroup=Finance Team", f"unixgroup={GROUP}", "type=local")
        _run("sharesec", "-s", conf, "finance", "-R", "S-1-1-0:ALLOWED/0x0/READ,S-1-5-32-544:ALLOWED/0x0/FULL")
        _run("sharesec", "-s", conf, "finance", "-a", "S-1-5-32-545:DENIED/0x0/CHANGE")
        _run("sharesec", "-s", conf, "Team Docs", "-R", "S-1-5-32-544:ALLOWED/0x0/0x001f0089")
        yield server
    finally:
        server.destroy()
        subprocess.run(["userdel", ALICE], capture_output=True)
        subprocess.run(["userdel", BOB], capture_output=True)
        subprocess.run(["groupdel", GROUP], capture_output=True)


@pytest.fixture
def host(lab, sshd_server):
    """The adapter, logged in as root with the fixture's key, reading the lab's smb.conf."""
    with SambaSshHost(
        sshd_server.host,
        port=sshd_server.port,
        username=sshd_server.root_user,
        key_filename=sshd_server.client_key,
        known_hosts=sshd_server.known_hosts,
        smb_conf=str(lab.conf),
    ) as adapter:
        yield adapter


def test_identity(host, lab):
    identity = host.identity()
    assert identity.hostname == socket.gethostname()
    assert identity.netbios_name == "INVSRC"
    assert identity.workgroup == "LAB"
    assert identity.part_of_domain is False
    release = dict(
        line.split("=", 1) for line in open("/etc/os-release").read().splitlines() if "=" in line
    )
    assert identity.os_name == release["NAME"].strip('"')
    assert identity.os_version == release["VERSION"].strip('"')


def test_network(host, lab, sshd_server):
    # Other tests on this machine add and remove interfaces (network namespaces' veths and
    # bridges): read the links before and after, and hold the adapter list between the two.
    links_before = {link["ifname"] for link in json.loads(_run("ip", "-j", "link", "show"))}
    adapters = {a.name: a for a in host.network()}
    lo = adapters["lo"]
    assert lo.loopback and lo.mac_address is None
    addresses = {(a.address, a.prefix_length, a.family) for a in lo.addresses}
    assert (lab.address, 8, "ipv4") in addresses
    assert (sshd_server.host, 8, "ipv4") in addresses
    assert ("::1", 128, "ipv6") in addresses
    expected_gateways = {
        route["dev"]: route["gateway"]
        for route in json.loads(_run("ip", "-j", "route", "show"))
        if route.get("dst") == "default"
    }
    links = {link["ifname"]: link for link in json.loads(_run("ip", "-j", "addr", "show"))}
    nameservers = [
        line.split()[1] for line in open("/etc/resolv.conf") if line.startswith("nameserver")
    ]
    for name, gateway in expected_gateways.items():
        assert gateway in adapters[name].gateways
        assert adapters[name].mac_address == links[name]["address"]
        assert adapters[name].dns_servers == nameservers
    assert links_before & set(links) <= set(adapters) <= links_before | set(links)


def test_volumes(host, lab):
    volumes = host.volumes()
    mount = _run("findmnt", "-n", "-o", "TARGET", "-T", str(lab.root)).strip()
    volume = next(v for v in volumes if v.mount_point == mount)
    stat = os.statvfs(lab.root)
    assert volume.size_bytes == stat.f_blocks * stat.f_frsize
    assert abs(volume.free_bytes - stat.f_bavail * stat.f_frsize) < 0.05 * volume.size_bytes
    assert volume.filesystem == _run("findmnt", "-n", "-o", "FSTYPE", "-T", str(lab.root)).strip()
    assert len({v.mount_point for v in volumes}) == len(volumes)


def test_shares_every_property(host, lab):
    shares = {s.name: s for s in host.shares()}
    assert set(shares) == {"public", "finance", "Team Docs"}
    finance = shares["finance"]
    assert finance.path == str(lab.shares["finance"].path)
    assert finance.description == "Finance data (R&D)"
    assert finance.folder_enumeration_mode == "AccessBased"
    assert finance.caching_mode == "Documents"
    assert finance.concurrent_user_limit == 7
    assert finance.encrypt_data is True
    assert finance.share_type == "disk" and finance.special is False
    props = finance.properties
    assert props["browseable"] == "No"
    assert props["access based share enum"] == "Yes"
    assert props["oplocks"] == "No"
    assert props["level2 oplocks"] == "No"
    assert props["read only"] == "Yes"
    assert props["vfs objects"] == "acl_xattr"  # the share's own value overrides [global]
    assert props["veto files"] == "/*.tmp/"
    assert props["max connections"] == "7"
    assert props["admin users"] == "smsmig"  # inherited from [global]
    assert "workgroup" not in props  # a global-only parameter is not a share property
    assert props["hide dot files"] == "Yes"  # a Samba default nobody set: still reported

    public = shares["public"]
    assert public.folder_enumeration_mode == "Unrestricted"
    assert public.caching_mode == "Manual" and public.concurrent_user_limit == 0
    assert public.encrypt_data is False
    assert public.properties["vfs objects"] == "acl_xattr streams_xattr"  # inherited
    assert public.properties["read only"] == "No"
    assert public.description is None


def test_share_permissions(host, lab):
    shares = {s.name: s for s in host.shares()}
    finance = shares["finance"]
    expected_sddl = _run("sharesec", "-s", str(lab.conf), "finance", "--viewsddl").strip()
    assert finance.sddl == expected_sddl
    assert [(a.sid, a.access_type, a.right) for a in finance.access] == [
        ("S-1-5-32-545", "Deny", "Change"),
        ("S-1-1-0", "Allow", "Read"),
        ("S-1-5-32-544", "Allow", "Full"),
    ]
    # the masks behind the names are the ones Samba writes into the descriptor
    sddl_masks = [int(m, 16) for m in re.findall(r"\((?:A|D);;(0x[0-9a-f]+);", finance.sddl)]
    assert [a.mask for a in finance.access] == sddl_masks

    team = shares["Team Docs"]  # a name with a space: quoting reached sharesec intact
    assert team.description == "space in the name"
    assert [(a.sid, a.access_type, a.right, a.mask) for a in team.access] == [
        ("S-1-5-32-544", "Allow", "Custom", 0x001F0089)
    ]
    assert team.sddl == "D:(A;;0x001f0089;;;BA)"
    assert shares["public"].sddl == "D:(A;;0x001f01ff;;;WD)"


def test_local_principals(host, lab):
    principals = host.local_principals()
    users = {u.name: u for u in principals.users}
    conf = str(lab.conf)

    def sid_of(name: str) -> str:
        out = _run("pdbedit", "-s", conf, "-L", "-v", "-u", name)
        return re.search(r"User SID:\s+(\S+)", out).group(1)

    assert set(users) == {ALICE, BOB, "smsmig"}
    assert users[ALICE].sid == sid_of(ALICE) and users[ALICE].enabled is True
    assert users[BOB].sid == sid_of(BOB) and users[BOB].enabled is False
    assert users[ALICE].unix_id == int(_run("id", "-u", ALICE))
    groups = {g.name: g for g in principals.groups}
    finance = groups["Finance Team"]
    mapping = _run("net", "-s", conf, "groupmap", "list")
    assert f"Finance Team ({finance.sid}) -> {GROUP}" in mapping
    assert finance.unix_name == GROUP
    assert finance.unix_id == int(_run("getent", "group", GROUP).split(":")[2])
    members = {m.name: m for m in finance.members}
    assert members[ALICE].sid == users[ALICE].sid
    assert BOB not in members
    # each Samba account's primary Unix group is reported with the account as member
    primary = _run("id", "-gn", BOB).strip()
    assert BOB in {m.name for m in groups[primary].members}
    assert groups[primary].sid is None  # not mapped: no SID is invented


def test_password_login(sshd_server):
    with SambaSshHost(
        sshd_server.host,
        port=sshd_server.port,
        username=sshd_server.user,
        password=sshd_server.password,
        known_hosts=sshd_server.known_hosts,
    ) as adapter:
        assert any(a.name == "lo" for a in adapter.network())


def test_a_dropped_connection_is_made_again(sshd_server):
    """A run keeps its adapter for hours: when the server side of the connection goes away
    (here: its sshd session process killed), the next command logs on again instead of
    failing on the dead connection."""
    with SambaSshHost(sshd_server.host, port=sshd_server.port, username=sshd_server.user,
                      password=sshd_server.password, known_hosts=sshd_server.known_hosts) as adapter:
        assert adapter.run(["echo", "first"])[1] == "first\n"
        transport = adapter._client.get_transport()
        local_port = transport.sock.getsockname()[1]
        sockets = subprocess.run(["ss", "-Htnp", "state", "established",
                                  f"( sport = :{sshd_server.port} and dport = :{local_port} )"],
                                 capture_output=True, text=True, check=True).stdout
        pids = {int(pid) for pid in re.findall(r'"sshd",pid=(\d+)', sockets)}  # the server's side only
        assert pids, sockets
        for pid in pids:  # the session's processes: one may end with the other
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
        deadline = time.monotonic() + 10
        while transport.is_active() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not transport.is_active()
        assert adapter.run(["echo", "again"])[1] == "again\n"
        assert adapter._client.get_transport() is not transport


def test_wrong_password(sshd_server):
    adapter = SambaSshHost(
        sshd_server.host,
        port=sshd_server.port,
        username=sshd_server.user,
        password="not-the-Password-1",
        known_hosts=sshd_server.known_hosts,
    )
    with pytest.raises(AuthenticationFailed) as caught:
        adapter.identity()
    assert "not-the-Password-1" not in str(caught.value)
    assert sshd_server.user in str(caught.value)


def test_unreachable_host(sshd_server):
    address, lock = reserve_loopback_address()  # reserved, nothing listens there
    try:
        adapter = SambaSshHost(
            address, port=22, username="root", key_filename=sshd_server.client_key,
            known_hosts=sshd_server.known_hosts, timeout=5,
        )
        with pytest.raises(HostUnreachable) as caught:
            adapter.network()
        assert address in str(caught.value)
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/8", "dev", "lo"], capture_output=True)
        lock.close()


def test_unknown_host_key(sshd_server, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    adapter = SambaSshHost(
        sshd_server.host, port=sshd_server.port, username="root",
        key_filename=sshd_server.client_key, known_hosts=empty,
    )
    with pytest.raises(HostKeyUnknown) as caught:
        adapter.identity()
    assert "not in the known_hosts" in str(caught.value)
    missing = SambaSshHost(
        sshd_server.host, port=sshd_server.port, username="root",
        key_filename=sshd_server.client_key, known_hosts=tmp_path / "absent",
    )
    with pytest.raises(HostKeyUnknown):
        missing.identity()


def test_mismatched_host_key(sshd_server, tmp_path):
    impostor = tmp_path / "impostor"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor))
    known = tmp_path / "known_hosts"
    public = " ".join(impostor.with_suffix(".pub").read_text().split()[:2])
    known.write_text(f"[{sshd_server.host}]:{sshd_server.port} {public}\n")
    adapter = SambaSshHost(
        sshd_server.host, port=sshd_server.port, username="root",
        key_filename=sshd_server.client_key, known_hosts=known,
    )
    with pytest.raises(HostKeyMismatch) as caught:
        adapter.identity()
    assert "changed" in str(caught.value)


def test_command_failure_is_typed(sshd_server, tmp_path):
    with SambaSshHost(
        sshd_server.host, port=sshd_server.port, username="root",
        key_filename=sshd_server.client_key, known_hosts=sshd_server.known_hosts,
        smb_conf=str(tmp_path / "no such dir" / "smb.conf"),
    ) as adapter:
        with pytest.raises(CommandFailed) as caught:
            adapter.shares()
    error = caught.value
    assert error.exit_status != 0
    assert error.command.startswith("testparm -s '") and "no such dir" in error.command


def test_arguments_are_quoted_and_streams_do_not_deadlock(sshd_server, tmp_path):
    marker = tmp_path / "must-not-exist"
    with SambaSshHost(
        sshd_server.host, port=sshd_server.port, username="root",
        key_filename=sshd_server.client_key, known_hosts=sshd_server.known_hosts,
    ) as adapter:
        status, out, _ = adapter.run(["echo", f"a; touch {marker}", "$(id)"])
        assert (status, out) == (0, f"a; touch {marker} $(id)\n")
        assert not marker.exists()
        # 3 MB on each stream, more than an SSH window: both must be read concurrently
        script = "head -c 3000000 /dev/zero | tr '\\0' e >&2; head -c 3000000 /dev/zero | tr '\\0' o"
        status, out, err = adapter.run(["sh", "-c", script])
        assert status == 0 and len(out) == 3_000_000 and len(err) == 3_000_000


def test_commands_run_at_once_keep_their_order_and_failures(sshd_server):
    """Reads of several commands (shares, accounts) run them at once on the one connection:
    each command's output comes back in the order asked, all of them did run concurrently
    (each waits until every one has started), and a failing command raises its own error."""
    with SambaSshHost(sshd_server.host, port=sshd_server.port, username=sshd_server.user,
                      password=sshd_server.password, known_hosts=sshd_server.known_hosts) as adapter:
        marker = f"/tmp/sms-at-once-{os.getpid()}"
        wait_for_all = (f"touch {marker}.$0; n=0; while [ $(ls {marker}.* | wc -l) -lt 4 ] && [ $n -lt 100 ]; "
                        "do sleep 0.05; n=$((n+1)); done; echo $0 $n")
        try:
            outputs = adapter._runs_at_once([["sh", "-c", wait_for_all, str(index)] for index in range(4)])
        finally:
            for index in range(4):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{marker}.{index}")
        assert [out.split()[0] for _status, out, _err in outputs] == ["0", "1", "2", "3"]
        assert all(int(out.split()[1]) < 100 for _status, out, _err in outputs)  # none waited in vain
        with pytest.raises(CommandFailed) as failed:
            adapter._runs_at_once([["true"], ["sh", "-c", "echo broken >&2; exit 3"]])
        assert failed.value.exit_status == 3 and "broken" in str(failed.value)
        assert [status for status, _out, _err in adapter._runs_at_once(
            [["true"], ["sh", "-c", "exit 3"]], check=False)] == [0, 3]
