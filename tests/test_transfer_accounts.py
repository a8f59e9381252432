"""Local account migration and SID translation, without servers: security descriptor
rewriting (common.smb.security), the account plan (rename / merge / skip, built-in
accounts), the Windows PowerShell and its recorded output, and the transfer options.

The Samba side of the same code runs against real smbd and sshd in
tests/test_transfer_managed.py.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from common.smb.security import descriptor_sids, owner_sid, translate_descriptor
from common.transfer_options import TransferOptions
from orchestrator.hosts.facts import GroupMember, LocalGroup, LocalPrincipals, LocalUser
from orchestrator.transfer.principals import (
    _apply_windows,
    parse_windows_accounts_output,
    plan_accounts,
    windows_accounts_script,
)
from tests.test_share_recreation_winrm import split_literals

DATA = Path(__file__).parent / "data" / "winrm_accounts"
SRC = "S-1-5-21-111-222-333"
DST = "S-1-5-21-777-888-999"
EVERYONE = "S-1-1-0"


def sid_bytes(text: str) -> bytes:
    """A SID in its binary form, built here by hand (independent of the code under test)."""
    parts = [int(p) for p in text.split("-")[1:]]
    revision, authority, subs = parts[0], parts[1], parts[2:]
    return struct.pack("<BB", revision, len(subs)) + authority.to_bytes(6, "big") + \
        b"".join(struct.pack("<I", sub) for sub in subs)


def ace(ace_type: int, flags: int, mask: int, sid: str) -> bytes:
    body = struct.pack("<I", mask) + sid_bytes(sid)
    return struct.pack("<BBH", ace_type, flags, 4 + len(body)) + body


def descriptor(owner: str, group: str, aces: list[bytes], control: int = 0x8004 | 0x1000) -> bytes:
    """A self-relative SD laid out owner, group, DACL (as Samba returns them)."""
    owner_b, group_b = sid_bytes(owner), sid_bytes(group)
    acl_body = b"".join(aces)
    dacl = struct.pack("<BBHHH", 2, 0, 8 + len(acl_body), len(aces), 0) + acl_body
    owner_at = 20
    group_at = owner_at + len(owner_b)
    dacl_at = group_at + len(group_b)
    return struct.pack("<BBHIIII", 1, 0, control, owner_at, group_at, 0, dacl_at) + owner_b + group_b + dacl


def parse(sd: bytes) -> tuple[int, list]:
    """(control, [(type, flags, mask)]) read back by hand, to check nothing but SIDs moved."""
    control, dacl_at = struct.unpack_from("<H", sd, 2)[0], struct.unpack_from("<I", sd, 16)[0]
    count = struct.unpack_from("<H", sd, dacl_at + 4)[0]
    offset, entries = dacl_at + 8, []
    for _ in range(count):
        ace_type, flags, size = struct.unpack_from("<BBH", sd, offset)
        entries.append((ace_type, flags, struct.unpack_from("<I", sd, offset + 4)[0]))
        offset += size
    return control, entries


def test_translate_descriptor_rewrites_owner_group_and_aces_only():
    sd = descriptor(f"{SRC}-1001", f"{SRC}-513", [
        ace(1, 0x00, 0x000F0000, f"{SRC}-1002"),  # deny first, as given
        ace(0, 0x13, 0x001F01FF, f"{SRC}-1001"),
        ace(0, 0x00, 0x001200A9, EVERYONE),
    ])
    mapping = {f"{SRC}-1001": f"{DST}-1500", f"{SRC}-1002": f"{DST}-1501"}
    out = translate_descriptor(sd, mapping)
    assert owner_sid(sd) == f"{SRC}-1001"
    assert owner_sid(out) == f"{DST}-1500"
    assert descriptor_sids(out) == [f"{DST}-1500", f"{SRC}-513", f"{DST}-1501", f"{DST}-1500", EVERYONE]
    assert parse(out) == parse(sd)  # control bits, ACE order, types, flags and masks kept
    # Nothing mapped: the very same bytes come back (byte-exact copies stay byte-exact).
    assert translate_descriptor(sd, {"S-1-5-21-5-5-5-1000": f"{DST}-1"}) is sd
    assert translate_descriptor(sd, {}) is sd


def test_translate_descriptor_without_dacl_and_bad_bytes():
    sd = struct.pack("<BBHIIII", 1, 0, 0x8000, 20, 0, 0, 0) + sid_bytes(f"{SRC}-1001")
    out = translate_descriptor(sd, {f"{SRC}-1001": f"{DST}-7"})
    assert descriptor_sids(out) == [f"{DST}-7"]
    assert owner_sid(None) is None
    with pytest.raises(ValueError):
        translate_descriptor(b"\x01\x00", {f"{SRC}-1001": f"{DST}-7"})


def principals(users, groups=()) -> LocalPrincipals:
    return LocalPrincipals(users=[LocalUser(name, sid) for name, sid in users],
                           groups=[LocalGroup(name, sid, members=[GroupMember(m) for m in members])
                                   for name, sid, members in groups])


SOURCE = principals(
    [("Administrator", f"{SRC}-500"), ("alice", f"{SRC}-1001"), ("bob", f"{SRC}-1002"),
     ("nosid", None)],
    [("Finance", f"{SRC}-1010", ["alice", "bob", "CORP\\carol"]), ("Users", "S-1-5-32-545", ["alice"])])
DESTINATION = principals([("Administrator", f"{DST}-500"), ("Bob", f"{DST}-1200")],
                         [("finance", f"{DST}-1300", [])])


def by_name(outcomes):
    return {o.source_name: o for o in outcomes}


def test_plan_rename_merge_skip():
    renamed = by_name(plan_accounts(SOURCE, DESTINATION, "rename", {"alice"}))
    assert (renamed["Administrator"].status, renamed["Administrator"].destination_sid) == ("merged", f"{DST}-500")
    # alice is free in Samba but a Unix account of that name exists: never borrowed.
    assert (renamed["alice"].status, renamed["alice"].destination_name) == ("renamed", "alice-1")
    assert (renamed["bob"].status, renamed["bob"].destination_name) == ("renamed", "bob-1")
    assert (renamed["Finance"].status, renamed["Finance"].destination_name) == ("renamed", "Finance-1")
    assert renamed["Finance"].members == ["alice-1", "bob-1"]  # migrated users, new names
    assert renamed["nosid"].status == renamed["Users"].status == "skipped"

    merged = by_name(plan_accounts(SOURCE, DESTINATION, "merge"))
    assert (merged["bob"].status, merged["bob"].destination_sid) == ("merged", f"{DST}-1200")
    assert (merged["Finance"].status, merged["Finance"].destination_sid) == ("merged", f"{DST}-1300")
    assert (merged["alice"].status, merged["alice"].destination_name) == ("created", "alice")

    # The migration's own account is merged by name whatever the mode.
    service = by_name(plan_accounts(SOURCE, DESTINATION, "rename", set(), {"bob"}))
    assert (service["bob"].status, service["bob"].destination_sid) == ("merged", f"{DST}-1200")

    # A re-run maps accounts an earlier run created, while they still exist; never twice.
    again = principals([("Administrator", f"{DST}-500"), ("Bob", f"{DST}-1200"), ("alice-1", f"{DST}-1600")])
    rerun = by_name(plan_accounts(SOURCE, again, "rename", set(), set(),
                                  {f"{SRC}-1001": f"{DST}-1600", f"{SRC}-1002": f"{DST}-1601"}))
    assert (rerun["alice"].status, rerun["alice"].destination_sid) == ("merged", f"{DST}-1600")
    assert rerun["bob"].status == "renamed"  # its earlier account is gone: created anew
    assert rerun["Finance"].members == ["alice-1", rerun["bob"].destination_name]

    assert plan_accounts(SOURCE, DESTINATION, "skip") == []
    with pytest.raises(ValueError):
        plan_accounts(SOURCE, DESTINATION, "steal")


HOSTILE = "O'Brien’s $(Stop-Computer) `whoami`"


def test_windows_script_keeps_names_literal_and_creates_disabled_users():
    source = principals([("alice", f"{SRC}-1001"), (HOSTILE, f"{SRC}-1003")],
                        [("Finance", f"{SRC}-1010", ["alice", HOSTILE])])
    outcomes = plan_accounts(source, DESTINATION, "rename")
    script = windows_accounts_script(outcomes)
    code, literals = split_literals(script)
    assert HOSTILE in literals and "$(Stop-Computer)" not in code
    assert code.count("New-LocalUser") == 2 and "-Disabled" in code
    assert "New-LocalGroup -Name '' " in code and code.count("Add-LocalGroupMember") == 2
    assert "ConvertTo-SecureString" in code and "-Password (New-MigratedPassword)" in code
    assert not any("password" in literal.lower() for literal in literals)  # none travels


class RecordedWinRm:
    """Answers run_script with a recorded output (no Windows host can run here)."""

    host = "fs02.example"

    def __init__(self, output: bytes):
        self.output, self.scripts = output, []

    def run_script(self, name, body=None):
        self.scripts.append(body)
        return self.output.decode("utf-8")


def test_windows_recorded_output_fills_sids_and_failures():
    recorded = (DATA / "create_accounts.json").read_bytes()
    assert parse_windows_accounts_output(recorded)[("user", "alice")] == \
        ("S-1-5-21-3623811015-3361044348-30300820-1013", None)
    source = principals([("alice", f"{SRC}-1001"), ("bob", f"{SRC}-1002")],
                        [("Finance", f"{SRC}-1010", ["alice"])])
    outcomes = plan_accounts(source, principals([("bob", f"{DST}-1200")]), "rename")
    host = RecordedWinRm(recorded)
    _apply_windows(host, outcomes)
    result = by_name(outcomes)
    assert result["alice"].destination_sid == "S-1-5-21-3623811015-3361044348-30300820-1013"
    assert result["bob"].status == "failed" and "password policy" in result["bob"].reason
    assert result["Finance"].destination_sid == "S-1-5-21-3623811015-3361044348-30300820-1014"
    assert len(host.scripts) == 1  # one round trip for every account


def test_transfer_options_new_fields():
    options = TransferOptions.from_json(TransferOptions(max_duration=5, migrate_principals="merge").to_json())
    assert (options.max_duration, options.migrate_principals, options.skip_system_folders) == (5, "merge", True)
    assert options.is_system_folder("$RECYCLE.BIN\\S-1-5-21\\x") and options.is_system_folder("program files")
    assert not options.is_system_folder("data\\Windows") and not options.is_system_folder("Windows.old")
    assert not TransferOptions(skip_system_folders=False).is_system_folder("Users")
    for bad in ({"migrate_principals": "all"}, {"max_duration": -1}):
        with pytest.raises(ValueError):
            TransferOptions(**bad)
