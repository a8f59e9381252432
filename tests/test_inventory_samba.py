"""Inventory of a lab Samba server managed over the lab sshd, on the embedded defaults.

Everything goes through the ``sms`` command as an administrator would use it (SQLite
database and SQLite broker in a fresh state directory; ``sms inventory run --wait``
starts its own orchestrator worker and stops it). Every stored field is checked against
what the test configured: the smb.conf shares and share permissions, the Samba accounts
and group, the host's identity, addresses and volumes, and each file and folder the
test wrote through SMB (size, raw 100 ns times, attributes). Then the test changes
shares, accounts and files and checks that a second run updates exactly what changed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest
from sqlalchemy import select

from common.crypto import decrypt_secret
from common.db import session_scope
from common.models import (
    Event,
    FileRecord,
    FileState,
    LocalPrincipal,
    PrincipalKind,
    Server,
    ServerFacts,
    Share,
    UnchangedFile,
)
from common.settings import Settings
from orchestrator.hosts.smb_only import parse_share_descriptor
from tests.inventory_lab import ARCHIVE, DIRECTORY, HIDDEN, READONLY, SYSTEM, build_tree, list_share, sms
from tests.lab.fixtures import unavailable
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER, LabUnavailable, SambaServer
from tests.lab.smbio import LabTree

pytestmark = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"
)

ALICE, BOB, NEWUSER, GROUP = "smsinva", "smsinvb", "smsinvc", "smsinvgrp"
FINANCE_OPTIONS = {
    "comment": "Finance data (R&D)",
    "browseable": "no",
    "access based share enum": "yes",
    "oplocks": "no",
    "csc policy": "documents",
    "max connections": "7",
    "smb encrypt": "required",
    "read only": "yes",
    "veto files": "/*.tmp/",
}
DIRECTORIES = ["docs", "docs\\deep", "docs\\deep\\er", "docs\\empty", "many", "Windows",
               "Windows\\System32"]
FILES = {
    "readme.txt": 100,
    "big.dat": 300_000,
    "pagefile.sys": 1000,
    "docs\\a.bin": 4096,
    "docs\\deep\\er\\z.txt": 10,
    "Windows\\System32\\kernel.dll": 50,
    **{f"many\\f{i:03d}.dat": i * 7 for i in range(40)},
}
ATTRIBUTES = {
    "readme.txt": READONLY | ARCHIVE,
    "docs": DIRECTORY | HIDDEN,
    "docs\\a.bin": HIDDEN | SYSTEM | ARCHIVE,
}
SKIPPED = {"Windows", "pagefile.sys"}


def _run(*argv: str) -> str:
    return subprocess.run(argv, text=True, capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A running smbd with shares, share permissions, accounts, a group and a file tree."""
    try:
        server = SambaServer("invlab", tmp_path_factory.mktemp("samba-invlab"))
    except LabUnavailable as exc:
        unavailable(str(exc))
    server.add_share("public")
    server.add_share("finance", **FINANCE_OPTIONS)
    server.add_share("Team Docs", comment="space in the name")
    server.add_share("hidden$", comment="administrative")
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
        _run("net", "-s", conf, "groupmap", "add", "ntgroup=Inventory Team", f"unixgroup={GROUP}", "type=local")
        _run("sharesec", "-s", conf, "finance", "-R", "S-1-1-0:ALLOWED/0x0/READ,S-1-5-32-544:ALLOWED/0x0/FULL")
        _run("sharesec", "-s", conf, "finance", "-a", "S-1-5-32-545:DENIED/0x0/CHANGE")
        with LabTree(server.address, "public") as tree:
            configured = build_tree(tree, FILES, DIRECTORIES, ATTRIBUTES)
        server.configured = configured
        yield server
    finally:
        server.destroy()
        for user in (ALICE, BOB, NEWUSER):
            subprocess.run(["userdel", user], capture_output=True)
        subprocess.run(["groupdel", GROUP], capture_output=True)


@pytest.fixture(scope="module")
def inventoried(lab, sshd_server, tmp_path_factory):
    """The job created, the server added and the first inventory run, all through ``sms``."""
    state = tmp_path_factory.mktemp("sms-state")
    env = {"SMS_STATE_DIR": str(state), "LAB_SMB_PASSWORD": MIGRATION_PASSWORD}
    sms(env, "db", "upgrade")
    sms(env, "job", "create", "inv", "--description", "inventory test")
    sms(env, "server", "add", "inv", "fs1", "--kind", "samba", "--address", lab.address,
        "--user", MIGRATION_USER, "--password-env", "LAB_SMB_PASSWORD",
        "--ssh-host", sshd_server.host, "--ssh-port", str(sshd_server.port),
        "--ssh-user", sshd_server.root_user, "--ssh-key", str(sshd_server.client_key),
        "--known-hosts", str(sshd_server.known_hosts), "--smb-conf", str(lab.conf))
    result = sms(env, "inventory", "run", "inv", "--wait", "--json", "--timeout", "180")
    return env, state, result


def url_of(state) -> str:
    return f"sqlite:///{state / 'sms.sqlite'}"


def test_password_stored_encrypted_never_in_clear(inventoried):
    env, state, _ = inventoried
    with session_scope(url_of(state)) as session:
        server = session.scalars(select(Server)).one()
        assert MIGRATION_PASSWORD.encode() not in server.credential
        assert decrypt_secret(server.credential, Settings(state_dir=state)) == MIGRATION_PASSWORD
        assert server.management["key_file"].endswith("client_ed25519")
        assert "ssh_password" not in server.management
    shown = sms(env, "server", "show", "inv", "fs1", "--json").stdout
    assert MIGRATION_PASSWORD not in shown
    assert json.loads(shown)["password"] == "(stored, encrypted)"
    db_bytes = (state / "sms.sqlite").read_bytes() + (state / "broker.sqlite").read_bytes()
    assert MIGRATION_PASSWORD.encode() not in db_bytes


def test_run_reports_success_and_stops_its_worker(inventoried):
    _, state, result = inventoried
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["finished"] is True
    [server] = report["servers"]
    assert server["errors"] == {}
    assert sorted(server["shares"]) == ["Team Docs", "finance", "public"]
    log = next((state / "logs").glob("orchestrator-worker-*.log")).read_text()
    assert "ready." in log and "scan_directories" in log
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    for pid in pids:
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        assert str(state).encode() not in cmdline


def test_server_facts_match_the_host(inventoried, lab, sshd_server):
    _, state, _ = inventoried
    with session_scope(url_of(state)) as session:
        [facts] = session.scalars(select(ServerFacts)).all()
    assert facts.hostname == socket.gethostname()
    release = dict(line.split("=", 1) for line in open("/etc/os-release").read().splitlines() if "=" in line)
    assert facts.os_name == release["NAME"].strip('"')
    assert facts.os_version == release["VERSION"].strip('"')
    fqdn = subprocess.run(["hostname", "-f"], capture_output=True, text=True).stdout.strip()
    assert facts.domain == (fqdn.split(".", 1)[1] if "." in fqdn else "LAB")
    assert facts.extra["netbios_name"] == "INVLAB" and facts.extra["workgroup"] == "LAB"
    assert facts.extra["part_of_domain"] is False and facts.extra["management"] == "ssh"
    local_sid = _run("net", "-s", str(lab.conf), "getlocalsid").split()[-1]
    assert facts.machine_sid == local_sid
    adapters = {a["name"]: a for a in facts.network_adapters}
    assert {"address": lab.address, "prefix": 8, "dhcp": False} in adapters["lo"]["ipv4"]
    assert {"address": "::1", "prefix": 128} in adapters["lo"]["ipv6"]
    assert adapters["lo"]["loopback"] is True and adapters["lo"]["mac"] is None
    # Other tests on this machine add and remove interfaces: compare the lasting ones.
    links = {link["ifname"]: link for link in json.loads(_run("ip", "-j", "addr", "show"))}
    routes = json.loads(_run("ip", "-j", "route", "show"))
    for route in routes:
        if route.get("dst") == "default":
            adapter = adapters[route["dev"]]
            assert route["gateway"] in adapter["gateways"]
            assert adapter["mac"] == links[route["dev"]]["address"]
            assert [a["address"] for a in adapter["ipv4"]] == [
                a["local"] for a in links[route["dev"]]["addr_info"] if a["family"] == "inet"]
    mount = _run("findmnt", "-n", "-o", "TARGET", "-T", str(lab.root)).strip()
    volume = next(v for v in facts.volumes if v["mount_point"] == mount)
    stat = os.statvfs(lab.root)
    assert volume["size"] == stat.f_blocks * stat.f_frsize
    assert volume["filesystem"] == _run("findmnt", "-n", "-o", "FSTYPE", "-T", str(lab.root)).strip()


def test_shares_every_property_and_permissions(inventoried, lab):
    _, state, _ = inventoried
    with session_scope(url_of(state)) as session:
        shares = {s.name: s for s in session.scalars(select(Share))}
    assert set(shares) == {"public", "finance", "Team Docs"}  # hidden$ is administrative: left out
    finance = shares["finance"]
    assert finance.path == str(lab.shares["finance"].path)
    assert finance.remark == "Finance data (R&D)"
    assert finance.share_type == 0
    assert finance.max_uses == 7
    assert finance.caching_mode == "Documents"
    assert finance.access_based_enumeration is True
    assert finance.encrypt_data is True
    assert finance.continuously_available is False
    reported = finance.properties["reported"]
    for key, value in {"browseable": "No", "access based share enum": "Yes", "oplocks": "No",
                       "read only": "Yes", "veto files": "/*.tmp/", "max connections": "7",
                       "csc policy": "documents", "server smb encrypt": "required"}.items():
        assert reported[key] == value, key
    assert reported["admin users"] == MIGRATION_USER  # inherited from [global]
    expected_sddl = _run("sharesec", "-s", str(lab.conf), "finance", "--viewsddl").strip()
    assert finance.properties["sddl"] == expected_sddl
    access = [(a["sid"], a["access_type"], a["right"]) for a in finance.properties["access"]]
    assert access == [("S-1-5-32-545", "Deny", "Change"), ("S-1-1-0", "Allow", "Read"),
                      ("S-1-5-32-544", "Allow", "Full")]
    # The share's own security descriptor, as srvsvc level 502 gives it, says the same.
    assert finance.security_descriptor
    from_descriptor = [(a.sid, a.access_type, a.mask) for a in parse_share_descriptor(finance.security_descriptor)]
    assert from_descriptor == [(a["sid"], a["access_type"], a["mask"]) for a in finance.properties["access"]]

    public = shares["public"]
    assert public.path == str(lab.shares["public"].path)
    assert public.remark == "" and public.max_uses == 0
    assert public.access_based_enumeration is False and public.encrypt_data is False
    assert public.caching_mode == "Manual"
    assert public.properties["reported"]["read only"] == "No"
    assert shares["Team Docs"].remark == "space in the name"


def test_local_users_and_groups(inventoried, lab):
    _, state, _ = inventoried
    conf = str(lab.conf)
    with session_scope(url_of(state)) as session:
        principals = {(p.kind, p.name): p for p in session.scalars(select(LocalPrincipal))}
    sids = {}
    for user in (ALICE, BOB, MIGRATION_USER):
        verbose = _run("pdbedit", "-s", conf, "-L", "-v", "-u", user)
        sids[user] = next(line.split(":", 1)[1].strip() for line in verbose.splitlines()
                          if line.startswith("User SID:"))
    users = {name for kind, name in principals if kind is PrincipalKind.USER}
    assert users == {ALICE, BOB, MIGRATION_USER}
    alice, bob = principals[(PrincipalKind.USER, ALICE)], principals[(PrincipalKind.USER, BOB)]
    assert alice.sid == sids[ALICE] and alice.enabled is True
    assert bob.sid == sids[BOB] and bob.enabled is False
    group = principals[(PrincipalKind.GROUP, "Inventory Team")]
    mapping = _run("net", "-s", conf, "groupmap", "list", "verbose")
    group_sid = next(line.split(":", 1)[1].strip() for line in mapping.split("Inventory Team", 1)[1].splitlines()
                     if line.strip().startswith("SID"))
    assert group.sid == group_sid
    assert {"name": ALICE, "sid": sids[ALICE]}.items() <= next(
        m for m in group.members if m["name"] == ALICE).items()


def check_records(state, lab, share_name: str = "public") -> dict:
    """Every stored record of the share against the share's independent listing."""
    with LabTree(lab.address, share_name) as tree:
        actual = list_share(tree)
    with session_scope(url_of(state)) as session:
        share = session.scalar(select(Share).where(Share.name == share_name))
        records = {r.relative_path: r for r in session.scalars(
            select(FileRecord).where(FileRecord.share_id == share.id, FileRecord.run_id.is_(None)))}
        counters = (share.file_count, share.directory_count, share.total_bytes, share.scanned_at)
    expected_paths = {p for p in actual if not any(p == s or p.startswith(s + "\\") for s in SKIPPED)}
    assert set(records) == expected_paths | SKIPPED | {""}
    assert records[""].state is FileState.SCANNED and records[""].is_dir
    for path in expected_paths | SKIPPED:
        record, entry = records[path], actual[path]
        assert (record.is_dir, record.size, record.creation_time, record.last_write_time,
                record.change_time, record.attributes) == (
            entry.is_dir, entry.size, entry.creation_time, entry.last_write_time,
            entry.change_time, entry.attributes), path
        if not entry.is_dir:
            # Listing a folder moves its own last-access time (the scan lists it after its
            # parent recorded it), so folders' access times are checked against what the
            # test configured, in test_file_records_match_the_tree.
            assert record.last_access_time == entry.last_access_time, path
        expected_state = FileState.SKIPPED if path in SKIPPED else FileState.SCANNED
        assert record.state is expected_state, path
        assert record.error_code is None
    files = [p for p in expected_paths if not actual[p].is_dir]
    directories = [p for p in expected_paths if actual[p].is_dir]
    assert counters[:3] == (len(files), len(directories), sum(actual[p].size for p in files))
    assert counters[3] is not None
    return actual


def test_file_records_match_the_tree(inventoried, lab):
    _, state, _ = inventoried
    check_records(state, lab)
    with session_scope(url_of(state)) as session:
        share_id = session.scalar(select(Share.id).where(Share.name == "public"))
        records = {r.relative_path: r for r in session.scalars(
            select(FileRecord).where(FileRecord.share_id == share_id))}
    # The records hold exactly what the test configured: times to 100 ns, attributes, sizes.
    for path, (creation, access, write, attributes) in lab.configured.items():
        if path.startswith("Windows\\"):
            assert path not in records  # under an excluded folder: never listed
            continue
        record = records[path]
        assert (record.creation_time, record.last_access_time, record.last_write_time) == (
            creation, access, write), path
        assert record.attributes == attributes, path
        assert record.size == (0 if record.is_dir else FILES[path]), path
    assert len([p for p in records if p.startswith("many\\")]) == 40


def test_inventory_show_json(inventoried):
    env, _, _ = inventoried
    view = json.loads(sms(env, "inventory", "show", "inv", "--json").stdout)
    [server] = view["servers"]
    shares = {s["name"]: s for s in server["shares"]}
    public = shares["public"]["scan"]
    assert public["state"] == "complete" and public["errors"] == 0 and public["pending_directories"] == 0
    assert public["files"] == len(FILES) - 2 and public["directories"] == len(DIRECTORIES) - 2
    assert public["bytes"] == sum(size for path, size in FILES.items()
                                  if path != "pagefile.sys" and not path.startswith("Windows"))
    assert {u["name"] for u in server["users"]} == {ALICE, BOB, MIGRATION_USER}
    assert server["facts"]["hostname"] == socket.gethostname()
    assert server["errors"] == []
    human = sms({**env, "COLUMNS": "300"}, "inventory", "show", "inv").stdout
    assert "public" in human and "Inventory Team" in human and MIGRATION_PASSWORD not in human


def test_rerun_updates_what_changed(inventoried, lab):
    env, state, _ = inventoried
    conf = str(lab.conf)
    with session_scope(url_of(state)) as session:
        before = {r.relative_path: r.id for r in session.scalars(select(FileRecord))}
        # A transfer run's references to unchanged files (no foreign keys) into two shares.
        referenced = {name: session.scalar(select(FileRecord.id).join(Share, Share.id == FileRecord.share_id)
                                           .where(Share.name == name).limit(1)) for name in ("public", "Team Docs")}
        session.add_all(UnchangedFile(run_id=1, record_id=record_id) for record_id in referenced.values())
    # Change files: one removed, a subtree removed, one added, one rewritten with new times.
    with LabTree(lab.address, "public") as tree:
        tree.delete("many\\f000.dat")
        tree.delete("docs\\deep\\er\\z.txt")
        tree.delete("docs\\deep\\er")
        tree.delete("docs\\deep")
        build_tree(tree, {"docs\\new.txt": 33, "many\\f001.dat": 5000}, ["added"], start_index=500)
    # Change shares and accounts: a comment, a share removed, a user added, one deleted.
    lab.shares["public"].options["comment"] = "now with a comment"
    del lab.shares["Team Docs"]
    lab.write_conf()
    lab.reload()
    lab.add_user(NEWUSER, "New-Passw0rd!")
    _run("pdbedit", "-s", conf, "-x", "-u", BOB)

    result = sms(env, "inventory", "run", "inv", "--wait", "--json", "--timeout", "180")
    assert result.returncode == 0, result.stdout + result.stderr
    actual = check_records(state, lab)
    assert "docs\\deep" not in actual and "many\\f000.dat" not in actual and "added" in actual
    with session_scope(url_of(state)) as session:
        shares = {s.name: s for s in session.scalars(select(Share))}
        users = {p.name for p in session.scalars(select(LocalPrincipal).where(
            LocalPrincipal.kind == PrincipalKind.USER))}
        after = {r.relative_path: r.id for r in session.scalars(select(FileRecord))}
        facts_rows = session.scalars(select(ServerFacts)).all()
        removed = session.scalars(select(Event).where(Event.kind == "inventory.share.removed")).all()
        references = set(session.scalars(select(UnchangedFile.record_id)))
    assert set(shares) == {"public", "finance"}
    assert references == {referenced["public"]}  # the removed share's records are not referred to
    assert shares["public"].remark == "now with a comment"
    assert users == {ALICE, NEWUSER, MIGRATION_USER}
    assert len(facts_rows) == 1  # replaced, not accumulated
    assert [e.detail["share"] for e in removed] == ["Team Docs"]
    assert not any(path.startswith("docs\\deep") for path in after)
    assert set(before) - set(after) == {"many\\f000.dat", "docs\\deep", "docs\\deep\\er",
                                        "docs\\deep\\er\\z.txt"}
