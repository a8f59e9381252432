"""Recreating shares from a real Samba source on real Samba destinations, over the real sshd.

Three lab smbd instances, each with its own smb.conf, are managed over the lab sshd as
root: a source with shares of distinctive settings and share permissions set with
sharesec (one naming a local account of the source), a destination whose shares live in
smb.conf (the lab's normal case) and one with ``registry shares = yes``. After
``recreate_shares`` the destination's effective parameters (``testparm -s -v``) and
share permissions (``sharesec``) are read twice, through the adapter and independently
here with subprocess, and compared with the source field by field; the share must answer
over SMB. Path mapping, SID mapping and the error cases (folder not creatable, share
already there, path not mapped, values smb.conf cannot hold, a concurrent edit of
smb.conf) are checked against the same servers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import subprocess
from pathlib import Path

import pytest

from orchestrator.hosts import ShareRejected
from orchestrator.hosts.facts import ShareAccessEntry, ShareFacts
from orchestrator.hosts.samba_shares import EDIT_CONF_SCRIPT, NOT_CARRIED, carried_parameters, splice_section
from orchestrator.hosts.samba_ssh import SambaSshHost, parse_sharesec_view_all, parse_testparm
from orchestrator.hosts.smb_only import SmbOnlyHost
from orchestrator.transfer.shares import PathNotMapped, map_path, recreate_shares, translate_share
from tests.lab.fixtures import unavailable
from tests.lab.samba import LabUnavailable, SambaServer
from tests.lab.smbio import LabTree

USER = "smsshralice"
FINANCE = {
    "comment": "Finance (R&D) 'quoted' # not a comment",
    "browseable": "no",
    "access based share enum": "yes",
    "oplocks": "no",
    "level2 oplocks": "no",
    "csc policy": "documents",
    "max connections": "7",
    "vfs objects": "acl_xattr",
    "read only": "yes",
    "veto files": "/*.tmp/",
    "hosts allow": "127.0.0.0/8",
    "valid users": f"smsmig, {USER}",
    "create mask": "0640",
    "root preexec": "/bin/true",
}
TEAM = {"comment": "space in the name", "hide dot files": "no", "smb encrypt": "required"}


def _run(*argv: str) -> str:
    return subprocess.run(argv, text=True, capture_output=True, check=True).stdout


def _sid_of(conf: Path, user: str) -> str:
    return re.search(r"User SID:\s+(\S+)", _run("pdbedit", "-s", str(conf), "-L", "-v", "-u", user)).group(1)


def _server(tmp_path_factory, name: str, **extra_global: str) -> SambaServer:
    try:
        server = SambaServer(name, tmp_path_factory.mktemp(f"samba-{name}"), extra_global=extra_global)
        return server.start()
    except LabUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Source, file-config destination and registry destination, with the test account."""
    servers = []
    try:
        source = _server(tmp_path_factory, "shrsrc")
        servers.append(source)
        volume = source.root / "volume"
        source.add_share("finance", volume / "finance", **FINANCE)
        source.add_share("Team Docs", volume / "deep" / "Team Docs", **TEAM)
        source.add_user(USER, "Alice-Passw0rd!")
        conf = str(source.conf)
        _run("sharesec", "-s", conf, "finance", "-R", "S-1-1-0:ALLOWED/0x0/READ,S-1-5-32-544:ALLOWED/0x0/FULL")
        _run("sharesec", "-s", conf, "finance", "-a", "S-1-5-32-546:DENIED/0x0/CHANGE")
        _run("sharesec", "-s", conf, "finance", "-a", f"{_sid_of(source.conf, USER)}:ALLOWED/0x0/CHANGE")
        _run("sharesec", "-s", conf, "Team Docs", "-R",
             f"S-1-5-32-544:ALLOWED/0x0/0x001f0089,S-1-1-0:ALLOWED/0x0/READ,{_sid_of(source.conf, USER)}:ALLOWED/0x3/READ")
        files = _server(tmp_path_factory, "shrdst")
        servers.append(files)
        files.add_user(USER, "Alice-Passw0rd!")
        registry = _server(tmp_path_factory, "shrreg", **{"registry shares": "yes"})
        servers.append(registry)
        yield {"source": source, "files": files, "registry": registry, "volume": volume}
    finally:
        for server in servers:
            server.destroy()
        subprocess.run(["userdel", USER], capture_output=True)


def _adapter(sshd, server: SambaServer) -> SambaSshHost:
    return SambaSshHost(
        sshd.host, port=sshd.port, username=sshd.root_user, key_filename=sshd.client_key,
        known_hosts=sshd.known_hosts, smb_conf=str(server.conf),
    )


@pytest.fixture
def hosts(lab, sshd_server):
    """Adapters for the three servers, logged in over the lab sshd."""
    adapters = {name: _adapter(sshd_server, lab[name]) for name in ("source", "files", "registry")}
    yield adapters
    for adapter in adapters.values():
        adapter.close()


def _local_view(server: SambaServer) -> tuple[dict[str, dict[str, str]], dict[str, list]]:
    """The destination's effective share parameters and share ACLs, read here with subprocess."""
    conf = str(server.conf)
    sections = parse_testparm(_run("testparm", "-s", "-v", conf))
    share_level, scope = set(), None
    for line in _run("testparm", "--show-all-parameters").splitlines():
        if line.startswith("["):
            scope = line.strip()
        elif scope == "[local]" and "=" in line:
            share_level.add(line.split("=", 1)[0].strip())
    inherited = {k: v for k, v in sections.pop("global").items() if k in share_level}
    effective = {name: {**inherited, **own} for name, own in sections.items()}
    return effective, parse_sharesec_view_all(_run("sharesec", "-s", conf, "--view-all"))


def _assert_same_share(source_share: ShareFacts, server: SambaServer, name: str, path: str, sid_map: dict):
    effective, acls = _local_view(server)
    assert effective[name]["path"] == path
    carried = [k for k in source_share.properties if k not in NOT_CARRIED]
    assert len(carried) > 100  # every share-level parameter, not a hand-picked few
    mismatched = {k: (source_share.properties[k], effective[name].get(k)) for k in carried
                  if effective[name].get(k) != source_share.properties[k]}
    assert mismatched == {}
    expected = [(sid_map.get(a.sid, a.sid), a.access_type, a.flags, a.mask) for a in source_share.access]
    assert [(a.sid, a.access_type, a.flags, a.mask) for a in acls[name]] == expected


def test_recreate_into_smb_conf_matches_the_source(lab, hosts):
    source, destination = lab["source"], lab["files"]
    shares = {s.name: s for s in hosts["source"].shares()}
    sid_map = {_sid_of(source.conf, USER): _sid_of(destination.conf, USER)}
    target = destination.root / "volumes" / "e"
    mapping = {str(lab["volume"]): str(target), str(lab["volume"] / "deep"): str(target / "deeper")}
    conf_before = destination.conf.read_text()

    outcomes = recreate_shares(hosts["source"], hosts["files"], ["finance", "Team Docs"], mapping, sid_map)

    by_name = {o.name: o for o in outcomes}
    assert [o.status for o in outcomes] == ["created", "created"], [o.reason for o in outcomes]
    finance_path, team_path = str(target / "finance"), str(target / "deeper" / "Team Docs")
    assert by_name["finance"].destination_path == finance_path  # mapped by the shorter prefix
    assert by_name["Team Docs"].destination_path == team_path  # the longest prefix won
    assert Path(finance_path).is_dir() and Path(team_path).is_dir()
    assert any("root preexec = /bin/true" in n and "not carried" in n for n in by_name["finance"].notes)
    assert any(str(destination.conf) in n for n in by_name["finance"].notes)
    assert not any("untranslated" in n for n in by_name["finance"].notes)  # alice's SID was mapped

    for name, path in (("finance", finance_path), ("Team Docs", team_path)):
        _assert_same_share(shares[name], destination, name, path, sid_map)
    # the same through the adapter: SDDL equal to the source's with the SID translated
    read_back = {s.name: s for s in hosts["files"].shares()}
    for name in ("finance", "Team Docs"):
        assert read_back[name].sddl == translate_share(shares[name], sid_map)[0].sddl
        assert [(a.sid, a.access_type, a.flags, a.mask) for a in read_back[name].access] == [
            (sid_map.get(a.sid, a.sid), a.access_type, a.flags, a.mask) for a in shares[name].access]
        carried = [k for k in shares[name].properties if k not in NOT_CARRIED]
        assert {k: read_back[name].properties[k] for k in carried} == {k: shares[name].properties[k] for k in carried}
        for field in ("description", "folder_enumeration_mode", "caching_mode", "encrypt_data",
                      "concurrent_user_limit", "share_type"):
            assert getattr(read_back[name], field) == getattr(shares[name], field)
    assert read_back["finance"].properties["root preexec"] == ""
    # smb.conf kept its old text, gained two sections, and the previous file was kept
    text = destination.conf.read_text()
    assert text.startswith(conf_before)
    assert Path(f"{destination.conf}.sms-previous").exists()
    # the shares answer over SMB (finance: valid users and hosts allow admit the migration account)
    for name in ("finance", "Team Docs"):
        for server in (source, destination):
            with LabTree(server.address, name):
                pass


def test_recreate_into_the_registry_and_report_unmapped_local_sids(lab, hosts):
    source, destination = lab["source"], lab["registry"]
    shares = {s.name: s for s in hosts["source"].shares()}
    conf_before = destination.conf.read_text()
    target = destination.root / "data"
    outcomes = recreate_shares(hosts["source"], hosts["registry"], [shares["Team Docs"]], {str(lab["volume"]): str(target)})

    [outcome] = outcomes
    assert outcome.status == "created", outcome.reason
    alice = _sid_of(source.conf, USER)
    assert any(alice in n and "local to the source" in n for n in outcome.notes)
    assert any("registry" in n for n in outcome.notes)
    assert destination.conf.read_text() == conf_before  # smb.conf untouched
    registry = _run("net", "-s", str(destination.conf), "conf", "showshare", "Team Docs")
    assert f"path = {target / 'deep' / 'Team Docs'}" in registry
    _assert_same_share(shares["Team Docs"], destination, "Team Docs", str(target / "deep" / "Team Docs"), {})
    with LabTree(destination.address, "Team Docs"):
        pass
    # a re-run with replace updates the registry share in place
    changed = dataclasses.replace(shares["Team Docs"], properties={**shares["Team Docs"].properties, "comment": "v2"})
    [again] = recreate_shares(hosts["source"], hosts["registry"], [changed], {str(lab["volume"]): str(target)},
                              replace=True)
    assert again.status == "updated", again.reason
    registry = _run("net", "-s", str(destination.conf), "conf", "showshare", "Team Docs")
    assert "comment = v2" in registry and registry.count("[Team Docs]") == 1
    assert destination.conf.read_text() == conf_before
    # once more, nothing changed on the source: the share is left as it is
    [same] = recreate_shares(hosts["source"], hosts["registry"], [changed], {str(lab["volume"]): str(target)},
                             replace=True)
    assert same.status == "unchanged", same.reason
    assert _run("net", "-s", str(destination.conf), "conf", "showshare", "Team Docs") == registry


def test_a_destination_without_management_access(lab, hosts):
    share = next(s for s in hosts["source"].shares() if s.name == "finance")
    smb_only = SmbOnlyHost(lab["files"].address, username="smsmig", password="unused-Passw0rd")
    [outcome] = recreate_shares(hosts["source"], smb_only, [share], {str(lab["volume"]): "/anywhere"})
    assert outcome.status == "failed"
    assert "cannot create folders" in outcome.reason


def test_existing_share_is_refused_then_updated_with_replace(lab, hosts, tmp_path):
    destination = lab["files"]
    share = next(s for s in hosts["source"].shares() if s.name == "finance")
    mapping = {str(lab["volume"]): str(tmp_path / "replace")}
    first = recreate_shares(hosts["source"], hosts["files"], [share], mapping, replace=True)
    assert first[0].status in ("created", "updated"), first[0].reason  # earlier tests may have made it
    conf_after_first = destination.conf.read_text()

    again = recreate_shares(hosts["source"], hosts["files"], [share], mapping)
    assert again[0].status == "failed"
    assert "already has a share named 'finance'" in again[0].reason
    assert "replace" in again[0].reason
    assert destination.conf.read_text() == conf_after_first  # nothing was changed

    share.properties["comment"] = "changed on the source"
    share.properties["max connections"] = "9"
    updated = recreate_shares(hosts["source"], hosts["files"], [share], mapping, replace=True)
    assert updated[0].status == "updated", updated[0].reason
    effective, _ = _local_view(destination)
    assert effective["finance"]["comment"] == "changed on the source"
    assert effective["finance"]["max connections"] == "9"
    assert len(re.findall(r"^\[finance\]$", destination.conf.read_text(), re.MULTILINE)) == 1


def test_folder_that_cannot_be_created(lab, hosts, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    share = next(s for s in hosts["source"].shares() if s.name == "Team Docs")
    conf_before = lab["files"].conf.read_text()
    [outcome] = recreate_shares(hosts["source"], hosts["files"], [share], {str(lab["volume"]): str(blocker)})
    assert outcome.status == "failed"
    assert outcome.reason.startswith(f"folder {blocker}/deep/Team Docs could not be created on ")
    assert "Not a directory" in outcome.reason
    assert lab["files"].conf.read_text() == conf_before


def test_unmapped_path_special_share_and_unknown_name(lab, hosts):
    share = next(s for s in hosts["source"].shares() if s.name == "finance")
    ipc = ShareFacts(name="IPC$", path=None, share_type="ipc", special=True)
    outcomes = recreate_shares(hosts["source"], hosts["files"], [share, ipc, "no such share"], {"/elsewhere": "/x"})
    assert [o.status for o in outcomes] == ["failed", "skipped", "failed"]
    assert "no entry of the pairing's path mapping covers" in outcomes[0].reason
    assert "has no share 'no such share'" in outcomes[2].reason


def test_values_smb_conf_cannot_hold_are_refused(lab, hosts, tmp_path):
    conf_before = lab["files"].conf.read_text()
    trailing = ShareFacts(name="trail", path="/src/trail", description="ends with a backslash\\", sddl="D:(A;;0x001f01ff;;;WD)")
    bracket = ShareFacts(name="bad]name", path="/src/bad")
    global_ = ShareFacts(name="Global", path="/src/global", share_type="disk")
    outcomes = recreate_shares(hosts["source"], hosts["files"], [trailing, bracket, global_],
                               {"/src": str(tmp_path / "v")})
    assert [o.status for o in outcomes] == ["failed", "failed", "failed"]
    assert "backslash" in outcomes[0].reason and "comment" in outcomes[0].reason
    assert "cannot be used on Samba" in outcomes[1].reason
    assert "names a special section of smb.conf" in outcomes[2].reason
    assert lab["files"].conf.read_text() == conf_before
    with pytest.raises(ShareRejected):
        hosts["files"].create_share(trailing, str(tmp_path / "v" / "trail"))


def test_windows_share_facts_become_samba_parameters(lab, hosts, tmp_path):
    """A share known by SMS's typed fields only (a Windows source) gets the equivalent parameters."""
    share = ShareFacts(
        name="FromWindows", path="D:\\Shares\\Finance", description="Finance & Payroll <confidential>",
        folder_enumeration_mode="AccessBased", caching_mode="Programs", concurrent_user_limit=25,
        encrypt_data=True, continuously_available=True,
        access=[ShareAccessEntry(trustee="S-1-5-32-544", sid="S-1-5-32-544", access_type="Allow", right="Full"),
                ShareAccessEntry(trustee="S-1-1-0", sid="S-1-1-0", access_type="Deny", right="Change")],
    )
    [outcome] = recreate_shares(hosts["source"], hosts["files"], [share], {"d:\\shares": str(tmp_path / "w")})
    assert outcome.status == "created", outcome.reason
    assert outcome.destination_path == str(tmp_path / "w" / "Finance")
    assert any("continuously available" in n for n in outcome.notes)
    effective, acls = _local_view(lab["files"])
    got = effective["FromWindows"]
    assert (got["comment"], got["access based share enum"], got["csc policy"], got["max connections"],
            got["server smb encrypt"], got["read only"]) == (
        "Finance & Payroll <confidential>", "Yes", "programs", "25", "required", "No")
    # entries given as a list are stored in canonical order (deny first), as Windows keeps them
    assert [(a.sid, a.access_type, a.right) for a in acls["FromWindows"]] == [
        ("S-1-1-0", "Deny", "Change"), ("S-1-5-32-544", "Allow", "Full")]


def test_edit_script_refuses_a_concurrent_change(tmp_path):
    """The remote edit script itself (run locally): stale hash -> nothing written."""
    conf = tmp_path / "smb.conf"
    conf.write_text("[global]\n\tworkgroup = LAB\n")
    new_text = splice_section(conf.read_text(), "x", "[x]\n\tpath = /tmp\n")
    stale = hashlib.sha256(b"what it was before").hexdigest()
    result = subprocess.run(["sh", "-c", EDIT_CONF_SCRIPT, "sh", str(conf), stale, "testparm"],
                            input=new_text, text=True, capture_output=True)
    assert result.returncode == 75 and "changed while the share was being prepared" in result.stderr
    assert conf.read_text() == "[global]\n\tworkgroup = LAB\n"
    assert list(tmp_path.iterdir()) == [conf]  # the temporary file was removed
    current = hashlib.sha256(conf.read_bytes()).hexdigest()
    bad = new_text + "\tno such parameter = 1\n"
    result = subprocess.run(["sh", "-c", EDIT_CONF_SCRIPT, "sh", str(conf), current, "testparm"],
                            input=bad, text=True, capture_output=True)
    assert result.returncode == 65 and "unknown parameter" in result.stderr
    result = subprocess.run(["sh", "-c", EDIT_CONF_SCRIPT, "sh", str(conf), current, "testparm"],
                            input=new_text, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr
    assert conf.read_text() == new_text
    assert (tmp_path / "smb.conf.sms-previous").read_text() == "[global]\n\tworkgroup = LAB\n"


# --- pure functions ------------------------------------------------------------------

@pytest.mark.parametrize(
    "source, mapping, expected",
    [
        ("/srv/data/fin", {"/srv/data": "/export/e"}, "/export/e/fin"),
        ("/srv/data", {"/srv/data/": "/export/e"}, "/export/e"),
        ("/srv/data/fin/x", {"/srv": "/a", "/srv/data/fin": "/b"}, "/b/x"),
        ("/srv/database", {"/srv/data": "/x", "/": "/root-mapped"}, "/root-mapped/srv/database"),
        ("D:\\Shares\\Finance", {"d:\\SHARES": "E:\\Data"}, "E:\\Data\\Finance"),
        ("D:\\Shares\\Finance", {"D:": "E:\\"}, "E:\\Shares\\Finance"),
        ("D:/Shares/Finance", {"D:\\Shares": "/export/d"}, "/export/d/Finance"),
        ("/srv/data/Team Docs", {"/srv/data": "F:\\Migrated"}, "F:\\Migrated\\Team Docs"),
    ],
)
def test_map_path(source, mapping, expected):
    assert map_path(source, mapping) == expected


@pytest.mark.parametrize(
    "source, mapping",
    [("/srv/database", {"/srv/data": "/x"}), ("/Srv/data", {"/srv": "/x"}), ("D:\\x", {"/": "/y"}),
     ("C:\\data", {"D:\\": "E:\\"})],
)
def test_map_path_refuses_what_is_not_covered(source, mapping):
    with pytest.raises(PathNotMapped):
        map_path(source, mapping)


def test_translate_share_maps_sids_and_reports_host_bound_ones():
    local, domain = "S-1-5-21-1-2-3-1001", "S-1-5-21-9-9-9-1105"
    share = ShareFacts(
        name="x", path="/x",
        sddl=f"D:(A;;0x001200a9;;;WD)(A;;0x001f01ff;;;{local})(D;;0x001f01ff;;;{domain})(A;;FA;;;S-1-22-2-1000)",
        access=[ShareAccessEntry(trustee=local, sid=local, access_type="Allow", right="Full"),
                ShareAccessEntry(trustee="CORP\\Finance", access_type="Allow", right="Change")],
    )
    translated, kept = translate_share(share, {local: "S-1-5-21-7-7-7-2001", "CORP\\Finance": "NEWCORP\\Finance"})
    assert translated.sddl == ("D:(A;;0x001200a9;;;WD)(A;;0x001f01ff;;;S-1-5-21-7-7-7-2001)"
                               f"(D;;0x001f01ff;;;{domain})(A;;FA;;;S-1-22-2-1000)")
    assert kept == [domain, "S-1-22-2-1000"]
    assert [(a.trustee, a.sid) for a in translated.access] == [
        ("S-1-5-21-7-7-7-2001", "S-1-5-21-7-7-7-2001"), ("NEWCORP\\Finance", None)]
    assert share.sddl.count(local) == 1  # the source's facts are not modified


def test_only_differing_parameters_are_written():
    share = ShareFacts(name="s", path="/s", properties={"path": "/s", "read only": "No", "comment": "c",
                                                         "browseable": "Yes", "root preexec": "/bin/x",
                                                         "fruit:aapl": "yes", "made up": "1"})
    params, notes = carried_parameters(share, known={"read only", "comment", "browseable", "root preexec"},
                                       inherited={"read only": "Yes", "comment": "", "browseable": "Yes",
                                                  "root preexec": ""})
    assert params == {"read only": "No", "comment": "c", "fruit:aapl": "yes"}
    assert any("root preexec" in n for n in notes) and any("made up" in n for n in notes)
