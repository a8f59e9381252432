"""A transfer to a Samba destination managed over SSH: accounts, share, SIDs, system
folders, owner in the log; then resume after a dead driver and the maximum duration.

Two lab smbd instances are managed as root over the real lab sshd. The source has a
local account (``smsxalice``), a share with its own settings and share permissions naming
that account, a file owned by it with an ACE for it, and SMS's system folders at the
share root. The destination has no share at all. After ``sms transfer drive`` (embedded
broker, a local worker process):

- the destination has the account (renamed: the host already knows the name), disabled;
- the destination share exists at the mapped folder with the source's settings (every
  carried parameter, field by field) and its permissions, the account's SID translated;
- the trees compare equal field by field (tests.lab.compare) except the security of
  entries naming the source account, whose descriptor is exactly the source's with the
  SIDs translated (the file is owned by the destination's account), and the system
  folders, which were not copied;
- the transfer CSV has the owner column with the source owner SID.

Retries: a file locked on the source is tried again ``retries`` times, ``retry_delay``
apart, within its batch. Resume: a run whose driver died after walking and recording its batches (their
messages lost) is finished by ``sms transfer drive`` from the database state. Maximum
duration: a run past its limit dispatches nothing more, its queued batches are given
up by the worker, and it ends completed with errors with the reason.
"""

from __future__ import annotations

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)

import csv
import json
import re
import subprocess
from datetime import timedelta

import pytest
from smbprotocol.open import CreateDisposition, CreateOptions, ImpersonationLevel, Open
from sqlalchemy import func, select, update

from common.db import session_scope
from common.models import (
    Batch,
    BatchState,
    Event,
    FileRecord,
    Job,
    Pairing,
    RunState,
    Server,
    ServerRole,
    SidMap,
    TransferRun,
    run_records,
    utcnow,
)
from common.settings import get_settings
from common.transfer_options import TransferOptions
from orchestrator.database import upgrade_to_head
from orchestrator.hosts.samba_shares import NOT_CARRIED
from orchestrator.hosts.samba_ssh import parse_sharesec_view_all, parse_testparm
from orchestrator.transfer import planning
from orchestrator.transfer.logs import export_run_logs
from orchestrator.transfer.reconcile import reconcile
from tests.lab.compare import split_security_descriptor
from tests.lab.smbio import FILE_READ_DATA, FILE_WRITE_DATA, SYNCHRONIZE, LabTree
from tests.test_transfer_accounts import ace, descriptor, sid_bytes
from tests.transfer_support import management, register_servers, sms, unexplained_differences, use_settings

pytestmark = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning")

USER = "smsxalice"
SHARE_SETTINGS = {"comment": "Team data (managed)", "hide dot files": "no", "oplocks": "no",
                  "max connections": "9"}
SYSTEM = ("Windows", "Windows\\system.ini", "pagefile.sys", "$Recycle.Bin")


def _run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("check", False)
    return subprocess.run(argv, text=True, capture_output=True, **kwargs)


def _sid_of(conf, user: str) -> str:
    out = _run("pdbedit", "-s", str(conf), "-L", "-v", "-u", user, check=True).stdout
    return re.search(r"User SID:\s+(\S+)", out).group(1)


def _pair_and_create_run(job: str, options: TransferOptions, path_mapping: dict) -> int:
    with session_scope() as session:
        servers = {s.name: s for s in session.scalars(
            select(Server).join(Job).where(Job.name == job))}
        pairing = planning.create_pairing(session, servers["src"], servers["dst"], ["data"], path_mapping)
        return planning.create_run(session, pairing, options).id


def _created_accounts(run_id: int) -> list[dict]:
    with session_scope() as session:
        return list(session.scalar(select(SidMap.accounts).where(SidMap.run_id == run_id)) or [])


@pytest.fixture
def managed_lab(samba_factory, sshd_server, tmp_path, monkeypatch):
    """Source with the account, share settings, permissions and files; empty destination."""
    use_settings(monkeypatch, SMS_STATE_DIR=str(tmp_path / "state"), SMS_BATCH_MAX_FILES="4",
                 SMS_WORKER_CONCURRENCY="1")
    upgrade_to_head(get_settings().database_url)
    src = samba_factory("msrc", **SHARE_SETTINGS)
    dst = samba_factory("mdst", shares=())
    created: list[dict] = []
    try:
        src.add_user(USER, "Alice-Passw0rd!")
        yield {"src": src, "dst": dst, "sshd": sshd_server, "created": created}
    finally:
        for account in created:
            if account["status"] in ("created", "renamed") and account["destination_name"]:
                tool = "userdel" if account["kind"] == "user" else "groupdel"
                _run(tool, account["destination_name"])
        _run("userdel", USER)


def _fill_source(src, alice: str) -> bytes:
    """The source tree; returns the security descriptor given to owned.txt."""
    with LabTree(src.address, "data") as lab:
        lab.mkdir("docs")
        for index in range(6):
            lab.write_file(f"docs\\note{index}.txt", f"note {index}\n".encode() * (index + 1))
        lab.write_file("owned.txt", b"alice's file\n")
        for path in SYSTEM:
            if path in ("Windows", "$Recycle.Bin"):
                lab.mkdir(path)
            else:
                lab.write_file(path, b"system\n")
        everyone_read = ace(0, 0, 0x001200A9, "S-1-1-0")
        owned = descriptor(alice, alice, [ace(0, 0, 0x001F01FF, alice), everyone_read])
        lab.set_security_descriptor("owned.txt", owned)
        return lab.security_descriptor("owned.txt")


def test_managed_samba_destination(managed_lab, tmp_path):
    src, dst, sshd = managed_lab["src"], managed_lab["dst"], managed_lab["sshd"]
    alice = _sid_of(src.conf, USER)
    _run("sharesec", "-s", str(src.conf), "data", "-R",
         f"S-1-1-0:ALLOWED/0x0/FULL,{alice}:ALLOWED/0x0/READ", check=True)
    owned_source_sd = _fill_source(src, alice)
    register_servers("managed", {"src": (src, ServerRole.SOURCE, management(sshd, src)),
                                 "dst": (dst, ServerRole.DESTINATION, management(sshd, dst))})
    paired = sms("transfer", "pair", "--job", "managed", "--source", "src", "--destination", "dst",
                 "--share", "data", "--path-map", f"{src.root / 'shares'}={dst.root / 'shares'}", "--json")
    assert json.loads(paired.stdout)["path_mapping"] == {str(src.root / "shares"): str(dst.root / "shares")}
    with session_scope() as session:
        run_id = planning.create_run(session, session.scalar(select(Pairing)), TransferOptions(retries=0)).id

    result = sms("transfer", "drive", str(run_id))
    managed_lab["created"].extend(_created_accounts(run_id))
    assert result.returncode == 0, result.stdout + result.stderr

    # The account: renamed (the host already has a Unix account of that name), disabled.
    accounts = {(a["kind"], a["source_name"]): a for a in _created_accounts(run_id)}
    account = accounts[("user", USER)]
    assert (account["status"], account["destination_name"]) == ("renamed", f"{USER}-1")
    out = _run("pdbedit", "-s", str(dst.conf), "-L", "-v", "-u", account["destination_name"], check=True).stdout
    destination_alice = re.search(r"User SID:\s+(\S+)", out).group(1)
    assert "D" in re.search(r"Account Flags:\s+\[(.*)\]", out).group(1)
    assert destination_alice == account["destination_sid"] != alice

    # The share: settings field by field, permissions with the SID translated.
    sections = parse_testparm(_run("testparm", "-s", "-v", str(src.conf), check=True).stdout)
    dsections = parse_testparm(_run("testparm", "-s", "-v", str(dst.conf), check=True).stdout)
    source_share = {**sections["global"], **sections["data"]}
    destination_share = {**dsections["global"], **dsections["data"]}
    assert destination_share["path"] == str(dst.root / "shares" / "data")
    carried = [k for k in sections["data"] if k not in NOT_CARRIED]
    assert "comment" in carried and "max connections" in carried
    assert {k: (source_share[k], destination_share.get(k)) for k in carried
            if destination_share.get(k) != source_share[k]} == {}
    acl = parse_sharesec_view_all(_run("sharesec", "-s", str(dst.conf), "--view-all", check=True).stdout)
    assert sorted((a.sid, a.mask) for a in acl["data"]) == sorted(
        [("S-1-1-0", 0x001F01FF), (destination_alice, 0x001200A9)])

    # The trees: equal except the system folders and the translated security of owned.txt.
    differences = unexplained_differences(src, dst)
    system = {d.path for d in differences if d.field == "missing"}
    assert system == {"Windows", "pagefile.sys", "$Recycle.Bin"}
    with session_scope() as session:
        sid_map = session.scalar(select(SidMap.entries).where(SidMap.run_id == run_id))
    assert sid_map[alice] == destination_alice

    def translated(raw: bytes) -> bytes:  # the expected bytes, by plain substitution
        for source_sid, destination_sid in sid_map.items():
            raw = raw.replace(sid_bytes(source_sid), sid_bytes(destination_sid))
        return raw

    rest = [d for d in differences if d.field not in ("missing", "last_access_time")]
    assert rest and {d.field for d in rest} <= {"owner", "group", "dacl"}
    with LabTree(src.address, "data") as source_lab, LabTree(dst.address, "data") as destination_lab:
        for path in {d.path for d in rest}:
            expected = split_security_descriptor(source_lab.security_descriptor(path))[1:]
            actual = split_security_descriptor(destination_lab.security_descriptor(path))[1:]
            assert actual == tuple(translated(part) for part in expected), path
        _control, owner, group, dacl = split_security_descriptor(destination_lab.security_descriptor("owned.txt"))
    assert owner == group == sid_bytes(destination_alice)
    assert dacl == split_security_descriptor(owned_source_sd)[3].replace(sid_bytes(alice), sid_bytes(destination_alice))

    # Reconciliation clean, owner in the CSV (the source's owner SID).
    with session_scope() as session:
        assert reconcile(session, run_id).clean
        full, _errors = export_run_logs(session, run_id, tmp_path / "logs")
    with open(full, encoding="utf-8") as log:
        rows = {row["path"]: row for row in csv.DictReader(log)}
    assert rows["owned.txt"]["owner"] == alice
    assert all(row["owner"].startswith("S-1-") for row in rows.values())
    assert not any(path.split("\\")[0] in ("Windows", "pagefile.sys", "$Recycle.Bin") for path in rows)

    # A re-run creates no account again (the earlier run's are mapped) and leaves the
    # share, already as the source's, alone: its smb.conf is not written again.
    conf_before = (dst.conf.stat().st_ino, dst.conf.stat().st_mtime_ns, dst.conf.read_text())
    with session_scope() as session:
        rerun_id = planning.create_run(session, session.scalar(select(Pairing)), TransferOptions(retries=0)).id
    result = sms("transfer", "drive", str(rerun_id))
    managed_lab["created"].extend(_created_accounts(rerun_id))
    assert result.returncode == 0, result.stdout + result.stderr
    again = {(a["kind"], a["source_name"]): a for a in _created_accounts(rerun_id)}
    assert not [a for a in again.values() if a["status"] in ("created", "renamed")]
    assert again[("user", USER)]["destination_sid"] == destination_alice
    with session_scope() as session:
        assert reconcile(session, rerun_id).clean
    assert _share_outcomes(rerun_id) == ["share data: unchanged"]
    assert (dst.conf.stat().st_ino, dst.conf.stat().st_mtime_ns, dst.conf.read_text()) == conf_before

    # A setting changed on the source: the next re-run updates the share.
    src.add_share("data", src.shares["data"].path, **{**SHARE_SETTINGS, "comment": "Team data (moved)"})
    with session_scope() as session:
        third_id = planning.create_run(session, session.scalar(select(Pairing)), TransferOptions(retries=0)).id
    result = sms("transfer", "drive", str(third_id))
    managed_lab["created"].extend(_created_accounts(third_id))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _share_outcomes(third_id) == ["share data: updated"]
    dsections = parse_testparm(_run("testparm", "-s", "-v", str(dst.conf), check=True).stdout)
    assert dsections["data"]["comment"] == "Team data (moved)"
    acl = parse_sharesec_view_all(_run("sharesec", "-s", str(dst.conf), "--view-all", check=True).stdout)
    assert sorted((a.sid, a.mask) for a in acl["data"]) == sorted(
        [("S-1-1-0", 0x001F01FF), (destination_alice, 0x001200A9)])


def _share_outcomes(run_id: int) -> list[str]:
    """'share NAME: STATUS' of each share the run recreated (its share events)."""
    with session_scope() as session:
        return [":".join(event.message.split(":")[:2]) for event in session.scalars(select(Event).where(
            Event.kind.in_((planning.EVENT_SHARE_RECREATED, planning.EVENT_SHARE_ERROR))))
            if event.detail.get("run_id") == run_id]


def test_resume_after_dead_driver_maximum_duration_and_retries(managed_lab):
    src, dst = managed_lab["src"], managed_lab["dst"]
    dst.add_share("data")
    with LabTree(src.address, "data") as lab:
        for index in range(10):
            lab.write_file(f"f{index:02d}.txt", b"x" * (index + 1))
    register_servers("resume", {"src": (src, ServerRole.SOURCE), "dst": (dst, ServerRole.DESTINATION)})
    run_id = _pair_and_create_run("resume", TransferOptions(retries=0, migrate_principals="skip"), {})

    # A driver that took the run, walked the share and recorded its batches, then died
    # before any message reached a worker.
    lost = []
    context = planning._start(run_id)
    with session_scope() as session:
        source, destination = session.get(Server, context.source_id), session.get(Server, context.destination_id)
    for target in context.shares:
        planning._plan_share(context, target, source, destination, lambda *a, **k: lost.append(a), print)
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Batch).where(Batch.run_id == run_id)) == 3
        assert session.get(TransferRun, run_id).state == RunState.RUNNING
    assert len(lost) == 3

    result = sms("transfer", "drive", str(run_id))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 queued batches published again" in result.stdout
    with session_scope() as session:
        paths = session.scalars(select(run_records(run_id).c.relative_path)).all()
        assert len(paths) == len(set(paths)) == 11  # ten files and the root, each recorded once
        assert reconcile(session, run_id).clean
    # The copy read each source file (relatime moved its last-access time afterwards).
    assert unexplained_differences(src, dst, ignore_access_times_of={f"f{i:02d}.txt" for i in range(10)}) == []

    # Maximum duration: a run already past its limit dispatches nothing more; the batch
    # still queued from before is given up by the worker with the reason.
    with LabTree(src.address, "data") as lab:
        lab.write_file("late.txt", b"late\n")
    with session_scope() as session:
        pairing = session.scalar(select(Pairing))
        run_id = planning.create_run(session, pairing, TransferOptions(
            retries=0, migrate_principals="skip", max_duration=30)).id
    context = planning._start(run_id)
    for target in context.shares:
        planning._plan_share(context, target, source, destination, lambda *a, **k: None, print)
    with session_scope() as session:
        session.execute(update(TransferRun).where(TransferRun.id == run_id).values(
            started_at=utcnow() - timedelta(seconds=60)))
    result = sms("transfer", "drive", str(run_id))
    assert result.returncode == 1, result.stdout + result.stderr
    with session_scope() as session:
        run = session.get(TransferRun, run_id)
        assert run.state == RunState.COMPLETED_WITH_ERRORS
        assert "maximum duration of 30 s exceeded" in run.error
        # The ten files the first run copied are unchanged (decided while planning, no
        # batch); the new one was dispatched and given up.
        records = run_records(run_id).c
        codes = dict(session.execute(select(records.relative_path, records.error_code).where(
            records.is_dir.is_(False))).all())
        assert codes == {**{f"f{i:02d}.txt": None for i in range(10)}, "late.txt": "MAX_DURATION_EXCEEDED"}
        assert {b.state for b in session.scalars(select(Batch).where(Batch.run_id == run_id))} == {BatchState.FAILED}
        assert not reconcile(session, run_id).clean

    # Retries: a file locked on the source is tried 1 + 2 times, 1 s apart, within its
    # batch; the other files are copied; the file fails with the NTSTATUS name.
    with LabTree(src.address, "data") as lab:
        lab.write_file("f03.txt", b"changed\n")
    with session_scope() as session:
        run_id = planning.create_run(session, session.scalar(select(Pairing)), TransferOptions(
            retries=2, retry_delay=1, migrate_principals="skip")).id
    with LabTree(src.address, "data") as locker:
        held = Open(locker.tree, "f03.txt")
        held.create(ImpersonationLevel.Impersonation, FILE_READ_DATA | FILE_WRITE_DATA | SYNCHRONIZE,
                    0, 0, CreateDisposition.FILE_OPEN, CreateOptions.FILE_NON_DIRECTORY_FILE)
        result = sms("transfer", "drive", str(run_id))
        held.close()
    assert result.returncode == 1, result.stdout + result.stderr
    with session_scope() as session:
        record = session.scalar(select(FileRecord).where(FileRecord.run_id == run_id,
                                                         FileRecord.relative_path == "f03.txt"))
        assert (record.state.value, record.error_code) == ("failed", "STATUS_SHARING_VIOLATION")
        batch = session.get(Batch, record.batch_id)
        assert (batch.finished_at - batch.dispatched_at).total_seconds() >= 2.0  # two delays of 1 s
        late = session.scalar(select(FileRecord).where(FileRecord.run_id == run_id,
                                                       FileRecord.relative_path == "late.txt"))
        assert late.state.value == "copied"
