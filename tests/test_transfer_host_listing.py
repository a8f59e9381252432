"""Re-runs compared on the servers' own listings (orchestrator.transfer.host_listing).

Two lab smbd instances managed as root over the real lab sshd, a real SQLite or
PostgreSQL job database; runs are driven in this process and every published batch is copied by the
real ``copy_batch`` task body. The tree is made over SMB, then:

- every run records both servers' clocks, and the destination's again at its end;
- the first re-run finds everything unchanged, most folders on the hosts' listings;
- the next re-run lists nothing over SMB at all: every folder is clean on both hosts, no
  batch, every file recorded by reference to the first run's record, the run clean;
- after changes on both sides (a file edited, added and deleted, an attribute set on the
  source; a file deleted and one altered on the destination behind the migration's back)
  exactly the changed files are dispatched, the folder nobody touched is still not
  listed over SMB, and the trees end equal field by field (tests.lab.compare);
- a DACL set on a source file and on a folder without any write (invisible over SMB on
  Samba) reaches the destination;
- every run keeps folder digests that match, folder by folder, what its records give,
  and the next run compares with them rather than with every record (a previous run
  without digests: with its records, to the same end); a run compared over SMB keeps none;
- a share with a VFS module that may rename entries is compared over SMB, and the run
  says why;
- a file locked during a run fails; its folder gets no digest, so the next run copies
  that file and nothing else;
- verifying runs take a folder clean only where its files hold verified hashes of their
  algorithm (another algorithm sends every file out to be hashed);
- on PostgreSQL, a walk that stops while the previous run's references are written
  ahead rolls them back, holds nothing and leaves the next run unaffected; a database
  that ends that idle transaction (an administrator's idle-in-transaction timeout) gets
  the clean folders' references written again, and the run ends clean.

``parse_share_listing`` is checked on the real output of ``LIST_SHARE_SCRIPT`` run on
this machine over a folder holding names SMB would show otherwise, a link and a pruned
folder, and the digests the orchestrator computes from records against the host's; run
as an account that cannot enter a folder, it fails with status 66 naming it; the
adapter's errors for a share the host does not have, over the real sshd.
"""

from __future__ import annotations

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)

import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from smbprotocol.open import CreateDisposition, CreateOptions, ImpersonationLevel, Open
from sqlalchemy import delete, func, select, text, true

from common.db import dispose_engines, session_scope
from common.models import (
    ARRIVED_STATES,
    Batch,
    Event,
    FileRecord,
    FolderDigest,
    Server,
    ServerRole,
    UnchangedFile,
    run_records,
)
from common.settings import get_settings
from common.smb.security import owner_sid
from common.transfer_options import TransferOptions
from orchestrator.database import upgrade_to_head
from orchestrator.hosts import CommandFailed, samba_host_listing
from orchestrator.hosts.samba_ssh import HOST_LISTING_PROGRAM, LIST_SHARE_SCRIPT, SambaSshHost, parse_share_listing
from orchestrator.transfer import host_listing, planning
from orchestrator.transfer.reconcile import reconcile
from tests.lab.smbio import FILE_READ_DATA, FILE_WRITE_DATA, SYNCHRONIZE, LabTree
from tests.test_transfer_accounts import ace, descriptor
from tests.transfer_support import (
    change_both_sides,
    drive_in_process,
    fill_rerun_tree,
    management,
    record_kinds,
    record_states,
    register_servers,
    unexplained_differences,
    use_settings,
)

DACL = 0x4  # DACL_SECURITY_INFORMATION


def _run(pairing_id: int, **options) -> tuple[int, list[list[str]], list[str]]:
    """Create and drive a run; (run id, the paths of each batch it published, its progress lines)."""
    lines: list[str] = []
    run_id, published = drive_in_process(pairing_id, TransferOptions(retries=0, **options), lines.append)
    return run_id, published, lines


def _settle() -> None:
    """Let the clock move past the margin: what was just written is then older than the
    next run's clocks allow for."""
    time.sleep(host_listing.CLOCK_MARGIN_NS / 1e9 + 0.2)


def _walked(lines: list[str]) -> str:
    return next(line for line in lines if ": walked " in line)


def _managed_pairing(samba_factory, sshd_server, prefix: str):
    """A source Samba server holding the re-run tree and an empty destination, both managed
    as root over the lab sshd, registered in the job database (migrated to head) and
    paired for share 'data'; (source, destination, pairing id)."""
    upgrade_to_head(get_settings().database_url)
    src, dst = samba_factory(f"{prefix}src"), samba_factory(f"{prefix}dst", shares=())
    fill_rerun_tree(src.address)
    register_servers(f"{prefix}hosts", {"src": (src, ServerRole.SOURCE, management(sshd_server, src)),
                                        "dst": (dst, ServerRole.DESTINATION, management(sshd_server, dst))})
    with session_scope() as session:
        servers = {s.name: s for s in session.scalars(select(Server))}
        pairing_id = planning.create_pairing(session, servers["src"], servers["dst"], ["data"],
                                             {str(src.root / "shares"): str(dst.root / "shares")}).id
    return src, dst, pairing_id


def _stored_digests(run_id: int) -> dict[str, FolderDigest]:
    with session_scope() as session:
        return {row.path: row for row in session.scalars(select(FolderDigest).where(FolderDigest.run_id == run_id))}


def _assert_digests_match_records(run_id: int) -> None:
    """The folder digests the run stored are, folder by folder, what its records (read
    through run_records, another path than the one that wrote them) give: the digest
    (host_listing.expected_digest), the files' record ids and their sizes' sum."""
    records = run_records(run_id).c
    with session_scope() as session:
        previous = {row[0]: tuple(row[1:]) for row in session.execute(select(
            records.relative_path, records.is_dir, records.size, records.last_write_time, records.change_time,
            records.attributes, records.id, true(), records.creation_time, records.last_access_time,
            records.origin_run_id).where(records.state.in_(ARRIVED_STATES)))}
    children: dict[str, list[str]] = {}
    for path in previous:
        if path:
            children.setdefault(path.rpartition("\\")[0], []).append(path)
    stored = _stored_digests(run_id)
    assert set(stored) == {path for path, before in previous.items() if before[0]}
    every_run = {before[9]: 0 for before in previous.values()}
    for folder, row in stored.items():
        files = [previous[path] for path in children.get(folder, []) if not previous[path][0]]
        assert sorted(host_listing.unpack_ids(row.file_ids)) == sorted(before[5] for before in files), folder
        assert row.file_bytes == sum(before[1] for before in files)
        assert row.digest == host_listing.expected_digest(folder, children.get(folder, []), previous, every_run, False)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_rerun_compares_on_the_hosts_listings(database, samba_factory, sshd_server, tmp_path, monkeypatch, request):
    """On the embedded SQLite and on PostgreSQL, where the references of the files the
    previous run recorded are written while the hosts list (planning._UnchangedRecorder)."""
    settings = {"SMS_DATABASE_URL": request.getfixturevalue("fresh_postgres_url")} if database == "postgresql" else {}
    use_settings(monkeypatch, SMS_STATE_DIR=str(tmp_path / "state"), SMS_BATCH_MAX_FILES="7", **settings)
    src, dst, pairing_id = _managed_pairing(samba_factory, sshd_server, "h")
    # Which runs compare the hosts' summaries with every record of the previous run rather
    # than with the folder digests it kept.
    from_records = []
    recorded_folders = host_listing.recorded_folders
    monkeypatch.setattr(host_listing, "recorded_folders",
                        lambda session, job, share, run, *rest: from_records.append(run)
                        or recorded_folders(session, job, share, run, *rest))
    # On PostgreSQL every re-run writes the references while the hosts list, and keeps
    # those of the folders found clean.
    settled = []
    settle = planning._UnchangedRecorder.settle
    monkeypatch.setattr(planning._UnchangedRecorder, "settle",
                        lambda recorder, clean: settled.append(recorder.context.run_id) or settle(recorder, clean))
    _settle()
    first, _batches, _lines = _run(pairing_id)
    assert set(state for state, _code in record_states(first).values()) == {"copied"}
    # The first run keeps its folder digests (it read the source's clock before its walk).
    _assert_digests_match_records(first)
    # Folders, the share root included.
    folders = sum(1 for path in record_states(first) if (src.shares["data"].path / path.replace("\\", "/")).is_dir())

    # Every run reads both clocks, and the destination's again once it has written
    # everything. The first re-run takes most folders clean already: only those holding a
    # folder whose metadata the first run applied within the clock margin of its end (the
    # last wave of folders) are listed over SMB.
    _settle()
    second, batches, lines = _run(pairing_id)
    assert batches == [] and set(record_states(second).values()) == {("skipped", None)}
    listed_over_smb = int(_walked(lines).split("walked ")[1].split()[0])
    assert listed_over_smb < folders and "found unchanged on the hosts' own listings" in _walked(lines)
    _assert_digests_match_records(second)
    with session_scope() as session:
        job_id = session.get(Server, 1).job_id
        clocks = host_listing.recorded_clocks(session, job_id, 1, {first, second})
        ends = {event.detail["run_id"]: event.detail["destination_clock"] for event in session.scalars(
            select(Event).where(Event.kind == host_listing.EVENT_HOST_CLOCK_END))}
    assert set(clocks) == set(ends) == {first, second}
    assert all(clocks[run] == (clocks[run][0], ends[run]) and clocks[run][0] for run in clocks)

    # Nothing changed since: nothing is listed over SMB, nothing dispatched, every file a
    # reference to the first run's record, every folder unchanged, the run clean. From
    # here on the runs leave the shares as they are: the hosts' listings begin before the
    # share check.
    checks = []
    check_existing_shares = planning._check_existing_shares
    monkeypatch.setattr(planning, "_check_existing_shares",
                        lambda *args: checks.append(time.time_ns()) or check_existing_shares(*args))
    _settle()
    third, batches, lines = _run(pairing_id, recreate_shares=False)
    with session_scope() as session:
        listed = [event.detail for event in session.scalars(select(Event).where(
            Event.kind == host_listing.EVENT_HOST_LISTING)) if event.detail["run_id"] == third]
    assert len(checks) == 1 and len(listed) == 1
    assert listed[0]["source_clock"] < checks[0] and listed[0]["destination_clock"] < checks[0]
    assert batches == []
    assert "walked 0 directories" in _walked(lines)
    assert f"({folders} folders found unchanged on the hosts' own listings)" in _walked(lines)
    assert record_states(third) == {path: ("skipped", None) for path in record_states(first)}
    with session_scope() as session:
        referenced = dict(session.execute(select(FileRecord.relative_path, FileRecord.run_id).join(
            UnchangedFile, UnchangedFile.record_id == FileRecord.id).where(UnchangedFile.run_id == third)).all())
        assert set(referenced.values()) == {first}
        assert len(referenced) == len(record_states(first)) - folders
        assert session.scalars(select(Batch).where(Batch.run_id == third)).all() == []
        report = reconcile(session, third)
    assert report.clean and report.shares[0].unchanged == report.shares[0].inventoried
    assert unexplained_differences(src, dst, ignore_all_access_times=True) == []
    _assert_digests_match_records(third)
    assert _stored_digests(first) == _stored_digests(second) == {}  # only the latest run's are kept

    # Changes on both sides: exactly those files go out; 'empty' is still clean.
    changed_files = change_both_sides(src.address, dst.address)
    _settle()
    fourth, batches, lines = _run(pairing_id, recreate_shares=False)
    dispatched = sorted(path for batch in batches for path in batch)
    assert dispatched == sorted(changed_files + ["a", "b", "b\\deep"])
    assert "folders found unchanged on the hosts' own listings" in _walked(lines)
    assert f"walked {folders - 1} directories" in _walked(lines)  # all but 'empty'
    states = record_states(fourth)
    assert "b\\f2.txt" not in states
    assert all(states[path] == ("copied", None) for path in dispatched)
    assert all(state == ("skipped", None) for path, state in states.items() if path not in dispatched)
    with session_scope() as session:
        assert reconcile(session, fourth).clean
    assert unexplained_differences(src, dst, ignore_all_access_times=True) == []
    _assert_digests_match_records(fourth)

    # A new DACL on a source file and on a folder, nothing written: over SMB both look
    # unchanged (Samba reports the last-write time as the change time); the hosts'
    # listings see their ctimes move, so both go out (and 'a', which holds the file), the
    # file's data is skipped as unchanged and its descriptor set, the folder's applied.
    new_dacls = {}
    with LabTree(src.address, "data") as lab:
        for path in ("a\\f2.txt", "empty"):
            owner = owner_sid(lab.security_descriptor(path))
            lab.set_security_descriptor(path, descriptor(owner, owner, [
                ace(0, 0, 0x001F01FF, owner), ace(0, 0, 0x001200A9, "S-1-1-0")]), what=DACL)
            new_dacls[path] = lab.security_descriptor(path, what=DACL)
    with LabTree(dst.address, "data") as lab:
        assert all(lab.security_descriptor(path, what=DACL) != dacl for path, dacl in new_dacls.items())
    _settle()
    fifth, batches, _lines = _run(pairing_id, recreate_shares=False)
    assert sorted(path for batch in batches for path in batch) == ["a", "a\\f2.txt", "empty"]
    with LabTree(dst.address, "data") as lab:
        assert {path: lab.security_descriptor(path, what=DACL) for path in new_dacls} == new_dacls
    with session_scope() as session:
        assert reconcile(session, fifth).clean
    assert unexplained_differences(src, dst, ignore_all_access_times=True) == []
    _assert_digests_match_records(fifth)

    # A previous run that kept no folder digests (as one made before they were kept): the
    # re-run compares the hosts' summaries with that run's records instead, to the same
    # end, and keeps digests again.
    with session_scope() as session:
        session.execute(delete(FolderDigest).where(FolderDigest.run_id == fifth))
    _settle()
    after_fifth, batches, lines = _run(pairing_id, recreate_shares=False)
    assert batches == [] and "folders found unchanged on the hosts' own listings" in _walked(lines)
    assert set(record_states(after_fifth).values()) == {("skipped", None)}
    _assert_digests_match_records(after_fifth)
    assert from_records == [fifth]  # every other re-run took the previous run's digests

    # A VFS module that may show entries under other names (catia): the hosts' listings
    # are not used, the run says why and compares every folder over SMB, to the same end.
    src.add_share("data", src.shares["data"].path, **{"vfs objects": "catia acl_xattr streams_xattr"})
    _settle()
    sixth, batches, lines = _run(pairing_id)
    assert batches == [] and f"walked {folders} directories" in _walked(lines)
    with session_scope() as session:
        said = [event.message for event in session.scalars(select(Event).where(
            Event.kind == host_listing.EVENT_HOST_LISTING)) if event.detail["run_id"] == sixth]
        assert reconcile(session, sixth).clean
    assert len(said) == 1 and "compared over SMB (source: VFS modules catia may show" in said[0]
    assert set(record_states(sixth).values()) == {("skipped", None)}
    # Compared over SMB alone, the run keeps no folder digests.
    assert _stored_digests(sixth) == {}
    assert settled == ([] if database == "sqlite" else list(range(second, sixth + 1)))


def test_a_walk_stopped_while_references_are_written_ahead_loses_and_holds_nothing(
        samba_factory, sshd_server, tmp_path, monkeypatch, fresh_postgres_url):
    """On PostgreSQL a re-run writes the previous run's references while the hosts list, in
    a transaction kept open until the clean folders are known. A walk that stops before
    then (here: finding the clean folders fails) rolls it back: the failed run holds no
    reference, no thread is left waiting, nothing holds a lock, and the next run finds
    everything unchanged as if the failed one had never been."""
    use_settings(monkeypatch, SMS_STATE_DIR=str(tmp_path / "state"), SMS_DATABASE_URL=fresh_postgres_url)
    _src, _dst, pairing_id = _managed_pairing(samba_factory, sshd_server, "a")
    _settle()
    first, _batches, _lines = _run(pairing_id)
    _settle()

    written_ahead = []
    speculate = planning._UnchangedRecorder._speculate

    def spy(recorder, baseline, loading):
        speculate(recorder, baseline, loading)
        written_ahead.append(recorder.context.run_id)

    def broken(baseline, listings):
        time.sleep(0.5)  # the references are written meanwhile, the transaction open
        raise RuntimeError("finding the clean folders failed")

    find_clean = planning._Baseline._find_clean
    monkeypatch.setattr(planning._UnchangedRecorder, "_speculate", spy)
    monkeypatch.setattr(planning._Baseline, "_find_clean", broken)
    threads_before = {thread.name for thread in threading.enumerate()}
    with session_scope() as session:
        failed = planning.create_run(session, session.get(planning.Pairing, pairing_id),
                                     TransferOptions(retries=0)).id
    with pytest.raises(RuntimeError, match="finding the clean folders failed"):
        planning.execute_run(failed, lambda dispatch: None, poll_interval=0.1)
    assert written_ahead == []  # rolled back: the speculation ended in the walk's error
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(UnchangedFile).where(
            UnchangedFile.run_id == failed)) == 0
        assert session.get(planning.TransferRun, failed).state.value == "failed"
        assert session.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                    "AND state LIKE 'idle in transaction%'")).scalar() == 0
    assert not [thread.name for thread in threading.enumerate()
                if thread.name.startswith("sms-unchanged") and thread.name not in threads_before]

    monkeypatch.setattr(planning._Baseline, "_find_clean", find_clean)
    _settle()
    after, batches, _lines = _run(pairing_id)
    assert batches == [] and written_ahead == [after]
    assert set(record_states(after).values()) == {("skipped", None)}
    with session_scope() as session:
        assert reconcile(session, after).clean


def test_references_written_ahead_and_lost_to_the_database_are_written_again(
        samba_factory, sshd_server, tmp_path, monkeypatch, fresh_postgres_url, caplog):
    """A database whose administrator ends transactions left idle (PostgreSQL's
    idle_in_transaction_session_timeout, here 200 ms) ends the transaction holding the
    references written ahead while the hosts list: the run writes the clean folders'
    references again in a transaction of its own and ends clean, every file recorded."""
    use_settings(monkeypatch, SMS_STATE_DIR=str(tmp_path / "state"), SMS_DATABASE_URL=fresh_postgres_url)
    _src, _dst, pairing_id = _managed_pairing(samba_factory, sshd_server, "i")
    _settle()
    first, _batches, _lines = _run(pairing_id)
    with session_scope() as session:
        database = session.execute(text("SELECT current_database()")).scalar()
        session.execute(text(f'ALTER DATABASE "{database}" SET idle_in_transaction_session_timeout = 200'))
    dispose_engines()  # new connections take the setting

    find_clean = planning._Baseline._find_clean

    def slow(baseline, listings):
        time.sleep(0.8)  # the hosts take their time; the references' transaction sits idle
        find_clean(baseline, listings)

    monkeypatch.setattr(planning._Baseline, "_find_clean", slow)
    _settle()
    with caplog.at_level(logging.WARNING, logger=planning.__name__):
        second, batches, _lines = _run(pairing_id)
    assert [record.getMessage() for record in caplog.records
            if "references written ahead were lost" in record.getMessage()]
    assert batches == [] and record_states(second) == {path: ("skipped", None) for path in record_states(first)}
    with session_scope() as session:
        assert reconcile(session, second).clean
        assert session.scalar(select(func.count()).select_from(UnchangedFile).where(
            UnchangedFile.run_id == second)) == sum(1 for kind in record_kinds(first).values() if not kind)


def test_verifying_reruns_take_folders_clean_only_with_hashes_of_their_algorithm(
        samba_factory, sshd_server, tmp_path, monkeypatch):
    """A run that verifies keeps, per folder, the algorithm all its files hold a verified
    hash of. The next run with that checksum finds every folder clean; one with another
    algorithm finds none (every file goes out to be hashed, the copy engine skipping its
    unchanged data) and keeps its own algorithm, so the run after it is clean again; a
    run that does not verify takes them clean whatever they hold."""
    use_settings(monkeypatch, SMS_STATE_DIR=str(tmp_path / "state"))
    src, dst, pairing_id = _managed_pairing(samba_factory, sshd_server, "v")

    def run(checksum: str) -> tuple[int, list[str]]:
        _settle()
        run_id, batches, _lines = _run(pairing_id, checksum=checksum)
        return run_id, sorted(path for batch in batches for path in batch)

    first, _dispatched = run("fast")
    files = {path for path, is_dir in record_kinds(first).items() if not is_dir}
    algorithms = {row.hash_algorithm for row in _stored_digests(first).values()}
    assert algorithms == {TransferOptions(checksum="fast").algorithm}
    second, dispatched = run("fast")
    assert dispatched == []
    third, dispatched = run("sha256")
    assert files <= set(dispatched)  # every file, to be hashed with the other algorithm
    assert {state for path, (state, _code) in record_states(third).items() if path in files} == {"verified"}
    assert {row.hash_algorithm for row in _stored_digests(third).values()} == {"sha256"}
    fourth, dispatched = run("sha256")
    assert dispatched == []
    fifth, dispatched = run("none")
    assert dispatched == []
    with session_scope() as session:
        assert all(reconcile(session, run_id).clean for run_id in (first, second, third, fourth, fifth))
    assert unexplained_differences(src, dst, ignore_all_access_times=True) == []


def test_a_file_locked_during_a_run_is_copied_by_the_next_on_the_hosts_listings(
        samba_factory, sshd_server, tmp_path, monkeypatch):
    """A file a user holds open exclusively fails (the run completes with errors); the
    folder digests that run keeps mark its folder as one to compare again, so the next
    run, on the hosts' listings, dispatches that file (and its folder's metadata, and
    nothing else) and copies it; the run after that finds nothing to do."""
    use_settings(monkeypatch, SMS_STATE_DIR=str(tmp_path / "state"))
    src, dst, pairing_id = _managed_pairing(samba_factory, sshd_server, "l")
    _settle()
    locker = LabTree(src.address, "data")
    try:
        held = Open(locker.tree, "a\\f2.txt")
        held.create(ImpersonationLevel.Impersonation, FILE_READ_DATA | FILE_WRITE_DATA | SYNCHRONIZE,
                    0, 0, CreateDisposition.FILE_OPEN, CreateOptions.FILE_NON_DIRECTORY_FILE)
        first, _batches = drive_in_process(pairing_id, TransferOptions(retries=0), expected="completed_with_errors")
    finally:
        locker.close()
    assert record_states(first)["a\\f2.txt"] == ("failed", "STATUS_SHARING_VIOLATION")
    digests = _stored_digests(first)
    assert digests["a"].digest is None
    assert all(row.digest is not None for path, row in digests.items() if path != "a")

    _settle()
    second, batches, lines = _run(pairing_id)
    assert sorted(path for batch in batches for path in batch) == ["a", "a\\f2.txt"]
    assert record_states(second)["a\\f2.txt"] == ("copied", None)
    _assert_digests_match_records(second)
    _settle()
    third, batches, lines = _run(pairing_id)
    assert batches == [] and set(record_states(third).values()) == {("skipped", None)}
    assert unexplained_differences(src, dst, ignore_all_access_times=True) == []


def _listing(conf, *prune: str, changed_since: int | None = None, env: dict | None = None):
    """The real output of LIST_SHARE_SCRIPT for share 'data' of ``conf`` on this machine, parsed."""
    out = subprocess.run(["sh", "-c", LIST_SHARE_SCRIPT, "sh", "data", str(conf), "scan",
                          "-" if changed_since is None else str(changed_since), *prune],
                         input=HOST_LISTING_PROGRAM, capture_output=True, env=env)
    assert out.returncode == 0 and not out.stderr, out
    return parse_share_listing(out.stdout)


def _filetime(path) -> int:
    return os.stat(path, follow_symlinks=False).st_mtime_ns // 100 + 116444736000000000


def test_parse_share_listing_on_the_hosts_real_summaries(tmp_path):
    root = tmp_path / "share"
    (root / "plain" / "deeper").mkdir(parents=True)
    (root / "plain" / "file.txt").write_bytes(b"12345")
    os.utime(root / "plain" / "file.txt", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    (root / "plain" / "a b").write_bytes(b"")  # sorts before 'a' as a line, after it as a name
    (root / "plain" / "a").write_bytes(b"xy")
    (root / "odd").mkdir()
    (root / "odd" / "back\\slash.txt").write_bytes(b"x")
    (root / "odd" / "inner").mkdir()
    (root / "odd" / "inner" / "f").write_bytes(b"x")
    os.mkdir(os.path.join(os.fsencode(root / "odd"), b"latin1-\xe9"))
    (root / "odd" / "back\\slashed").mkdir()
    (root / "odd" / "back\\slashed" / "g").write_bytes(b"x")
    (root / "link").symlink_to("plain")
    (root / "WINDOWS" / "System32").mkdir(parents=True)
    (root / "Odd[1]*").mkdir()  # pruned by its name, glob characters taken literally
    (root / "Oddx").mkdir()  # which the name as a pattern would match
    conf = tmp_path / "smb.conf"
    conf.write_text(f"[global]\nvfs objects = acl_xattr streams_xattr\n[data]\npath = {root}\n")
    before = time.time_ns()
    since = os.stat(root / "plain" / "a").st_ctime_ns

    listing = _listing(conf, "Windows", "odd[1]*", changed_since=since)
    assert listing.path == str(root) and listing.refusal is None
    assert before - 5_000_000_000 < listing.clock <= time.time_ns()
    # 'odd' holds names SMB would show otherwise: it is left out, and so is every folder
    # whose path holds such a name; its other subfolder is listed as it is.
    assert set(listing.folders) == {"", "plain", "plain\\deeper", "odd\\inner", "Oddx"}
    assert listing.folders["plain\\deeper"].newest_change == 0
    newest = max(os.stat(root / "plain" / name).st_ctime_ns for name in ("deeper", "file.txt", "a b", "a"))
    assert listing.folders["plain"].newest_change == newest
    # One by one: the entries changed since the threshold, in the folders listed.
    assert listing.changed["plain\\a"] == since and "plain\\deeper" not in listing.changed
    assert "odd\\inner\\f" in listing.changed and not any(path.startswith("odd\\back") for path in listing.changed)

    # The digest the orchestrator computes from records of the same entries is the host's;
    # a record of another size, time or kind, or a missing one, gives another.
    records = {"plain\\deeper": (True, 0, _filetime(root / "plain" / "deeper")),
               "plain\\file.txt": (False, 5, 1_700_000_000_123_456_789 // 100 + 116444736000000000),
               "plain\\a b": (False, 0, _filetime(root / "plain" / "a b")),
               "plain\\a": (False, 2, _filetime(root / "plain" / "a"))}

    def digest(previous: dict) -> str | None:
        previous = {path: (*fields, 0, 32, 1, True, 0, 0, 7) for path, fields in previous.items()}
        return host_listing.expected_digest("plain", list(previous), previous, {7: 0}, False)

    assert digest(records) == listing.folders["plain"].digest
    assert digest({**records, "plain\\a": (False, 3, records["plain\\a"][2])}) != listing.folders["plain"].digest
    assert digest({**records, "plain\\a": (False, 2, records["plain\\a"][2] + 1)}) != listing.folders["plain"].digest
    assert digest({**records, "plain\\deeper": (False, 0, records["plain\\deeper"][2])}) \
        != listing.folders["plain"].digest
    assert digest({path: fields for path, fields in records.items() if path != "plain\\a"}) \
        != listing.folders["plain"].digest
    # Clean where both hosts show that digest, unless the source shows an entry changed
    # at or after its record's run read the clock, or the destination anything newer
    # than the previous run's clock there.
    previous = {path: (*fields, 0, 32, 1, True, 0, 0, 7) for path, fields in records.items()}
    both = host_listing.HostListings(listing, listing)
    late = listing.folders["plain"].newest_change + host_listing.CLOCK_MARGIN_NS + 1

    def clean(limit: int, destination_clock: int, *, hashed: str | None = None, algorithm: str | None = None) -> bool:
        recorded = host_listing.RecordedFolders({"plain": host_listing.RecordedFolder(digest(records), hash_algorithm=hashed)},
                                                destination_clock, {7: limit})
        return "plain" in host_listing.clean_folders(recorded, previous, both, algorithm)

    assert clean(since + 1, late) and not clean(since, late) and not clean(since + 1, late - 1)
    # A verifying run takes a folder clean only where every file holds a hash of its algorithm.
    assert clean(since + 1, late, hashed="sha256", algorithm="sha256")
    assert not clean(since + 1, late, algorithm="sha256") and not clean(since + 1, late, hashed="md5", algorithm="sha256")

    # From folder digests (one limit for every record, none of them loaded): an entry the
    # source lists as changed since that limit keeps its folder from being clean.
    def clean_by_digest(source_limit: int) -> bool:
        recorded = host_listing.RecordedFolders({"plain": host_listing.RecordedFolder(digest(records))}, late,
                                                source_limit=source_limit)
        return "plain" in host_listing.clean_folders(recorded, {}, both, None)

    assert clean_by_digest(since + 1) and not clean_by_digest(since)
    root_digest = host_listing.expected_digest(
        "", ["plain", "odd", "link", "Oddx"], {path: (True, 0, _filetime(root / path), 0, 16, 1, True, 0, 0, 7)
                                               for path in ("plain", "odd", "link", "Oddx")},
        {7: 0}, False)
    assert root_digest != listing.folders[""].digest  # 'link' is neither a folder nor a file

    tools = tmp_path / "bin"  # a host without python3
    tools.mkdir()
    for tool in ("sh", "date", "testparm", "stat"):
        (tools / tool).symlink_to(shutil.which(tool))
    out = subprocess.run(["sh", "-c", LIST_SHARE_SCRIPT, "sh", "data", str(conf), "scan", "-"],
                         env={"PATH": str(tools)}, capture_output=True)
    assert out.returncode == 67

    conf.write_text(f"[global]\nvfs objects = catia acl_xattr\n[data]\npath = {root}\n")
    assert "catia" in _listing(conf).refusal  # [global]'s modules, which the share takes
    conf.write_text(f"[global]\nvfs objects = catia acl_xattr\n[Data]\npath = {root}\nvfs objects = acl_xattr\n")
    assert _listing(conf).refusal is None  # its own modules; the share's name in any case


def test_filesystem_type_from_mountinfo(tmp_path):
    findmnt = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(tmp_path)], capture_output=True, text=True)
    assert samba_host_listing.filesystem_type(str(tmp_path)) == findmnt.stdout.strip() != ""
    mountinfo = tmp_path / "mountinfo"  # the real format, optional fields and escapes
    mountinfo.write_text("22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
                         "30 22 0:26 / /srv/my\\040data rw,nosuid shared:9 master:2 - nfs4 server:/export rw\n"
                         "31 22 0:27 / /srv/my rw - xfs /dev/vdb rw\n")
    assert samba_host_listing.filesystem_type("/srv/my data/share", str(mountinfo)) == "nfs4"
    assert samba_host_listing.filesystem_type("/srv/my/share", str(mountinfo)) == "xfs"
    assert samba_host_listing.filesystem_type("/srv/mydata", str(mountinfo)) == "ext4"
    assert samba_host_listing.filesystem_type("/srv", str(tmp_path / "none")) == ""


def test_a_folder_the_account_cannot_read_fails_the_listing():
    """The listing program as an account that cannot enter one folder of the share: status
    66 and the folder named on standard error (the caller then compares over SMB)."""
    root = Path(tempfile.mkdtemp(prefix="sms-unreadable-"))
    try:
        (root / "open" / "closed").mkdir(parents=True)
        (root / "open" / "closed" / "f").write_bytes(b"x")
        for folder in (root, root / "open"):
            folder.chmod(0o755)
        (root / "open" / "closed").chmod(0)
        testparm = f"[global]\n\tvfs objects = acl_xattr\n\n[data]\n\tpath = {root}\n"
        out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "sh", "-c",
                              'program=$(cat "$1"); shift; printf %s "$testparm" | python3 -I -S -c "$program" "$@"',
                              "sh", samba_host_listing.__file__, "data", "", "scan", "-"],
                             env={"PATH": "/usr/local/bin:/usr/bin:/bin", "testparm": testparm}, capture_output=True)
        assert out.returncode == 66 and b"cannot list ./open/closed: Permission denied" in out.stderr, out
    finally:
        (root / "open" / "closed").chmod(0o755)
        shutil.rmtree(root)


def test_list_share_errors_over_ssh(samba_factory, sshd_server):
    server = samba_factory("hlist")
    adapter = SambaSshHost(sshd_server.host, port=sshd_server.port, username=sshd_server.root_user,
                           key_filename=sshd_server.client_key, known_hosts=sshd_server.known_hosts,
                           smb_conf=str(server.conf))
    with adapter:
        with pytest.raises(CommandFailed, match="no such share in the host's Samba configuration"):
            adapter.list_share("nope")
        clock = adapter.list_share("data", clock_only=True)
        assert clock.path == str(server.shares["data"].path) and clock.folders == {}
        assert abs(clock.clock - time.time_ns()) < 5_000_000_000
