"""A scan task lists a batch of folders at once and stores them in one transaction.

A real Samba share of many folders is scanned in this process (``run_scans_inline``,
real SQLite job database) by an account that may not read one of them, with every
folder of a level in one batch: the unreadable folder fails alone, its siblings of the
same batch are stored. Then many folders change at once (files removed, added and
rewritten, whole folders removed and added, a folder becoming unreadable) and the
re-scan must leave exactly the new tree's records, updating kept paths in place. Every
record is compared field by field with an independent listing (plain smbprotocol, as
the administrator) and the counters with that listing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from common.db import session_scope
from common.models import FileRecord, FileState, Share
from common.settings import reset_settings_cache
from orchestrator.database import upgrade_to_head
from orchestrator.inventory import tasks
from orchestrator.inventory.service import InventoryOptions, run_inventory
from orchestrator.inventory.tasks import run_scans_inline
from orchestrator.jobs import add_server, create_job
from tests.inventory_lab import build_tree, list_share
from tests.lab.fixtures import unavailable
from tests.lab.samba import LabUnavailable, SambaServer
from tests.lab.smbio import LabTree

READER, READER_PASSWORD = "smsinvbat", "Batch-Passw0rd!"
FOLDERS = [f"f{number:02d}" for number in range(20)]


@pytest.fixture
def lab(tmp_path):
    """A Samba share of 20 folders of files (written through SMB with distinct times, as
    folder times read through Samba otherwise follow their access time), one more folder
    only its owner may read, and one deeper level."""
    try:
        server = SambaServer("invbatch", tmp_path / "samba")
    except LabUnavailable as exc:
        unavailable(str(exc))
    share_root = Path(tempfile.mkdtemp(prefix="sms-invbatch-"))  # readable by the reader account
    os.chmod(share_root, 0o755)
    share = server.add_share("data", path=share_root / "data")
    os.chmod(share.path, 0o755)
    try:
        server.start()
        server.add_user(READER, READER_PASSWORD)
        files = {f"{folder}\\file{index}.bin": index * 100 + number
                 for number, folder in enumerate(FOLDERS) for index in range(number % 4 + 2)}
        files.update({f"{folder}\\sub\\deep.txt": number + 1 for number, folder in enumerate(FOLDERS)})
        files["secret\\hidden.txt"] = 5
        with LabTree(server.address, "data") as tree:
            build_tree(tree, files, FOLDERS + [f"{folder}\\sub" for folder in FOLDERS] + ["secret"])
        os.chmod(share.path / "secret", 0o700)
    except LabUnavailable as exc:
        unavailable(str(exc))
    yield server, share.path
    server.destroy()
    shutil.rmtree(share_root, ignore_errors=True)
    subprocess.run(["userdel", READER], capture_output=True)


@pytest.fixture
def database(tmp_path, monkeypatch):
    """A SQLite job database at head, settings pointing at it, every folder of a level in
    one scan batch."""
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    monkeypatch.setenv("SMS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SMS_DATABASE_URL", url)
    monkeypatch.setenv("SMS_SECRET_KEY", Fernet.generate_key().decode())
    monkeypatch.setattr(tasks, "FANOUT", 1)
    reset_settings_cache()
    upgrade_to_head(url)
    yield url
    reset_settings_cache()


def check(url: str, share_id: int, address: str, unreadable: set[str]) -> dict[str, FileRecord]:
    """The share's records against the administrator's listing, less what lies below the
    ``unreadable`` folders (each of which must be a failed record); returns the records."""
    with LabTree(address, "data") as tree:
        actual = {path: entry for path, entry in list_share(tree).items()
                  if not any(path.startswith(folder + "\\") for folder in unreadable)}
    with session_scope(url) as session:
        share = session.get(Share, share_id)
        records = {r.relative_path: r for r in session.scalars(
            select(FileRecord).where(FileRecord.share_id == share_id, FileRecord.run_id.is_(None)))}
        counters = (share.file_count, share.directory_count, share.total_bytes)
        assert share.scanned_at is not None
        session.expunge_all()
    assert set(records) == set(actual) | {""}
    for path, entry in actual.items():
        record = records[path]
        if path in unreadable:
            assert record.state is FileState.FAILED and record.error_code == "STATUS_ACCESS_DENIED", path
        else:
            assert record.state is FileState.SCANNED and record.error_code is None, path
        assert (record.is_dir, record.size, record.creation_time, record.last_write_time,
                record.change_time, record.attributes) == (
            entry.is_dir, entry.size, entry.creation_time, entry.last_write_time,
            entry.change_time, entry.attributes), path
    files = [e for e in actual.values() if not e.is_dir]
    assert counters == (len(files), sum(1 for e in actual.values() if e.is_dir), sum(e.size for e in files))
    return records


def test_a_batch_with_an_unreadable_folder_and_a_rescan_of_many_changed_folders(lab, database):
    server, root = lab
    with session_scope(database) as session:
        job = create_job(session, "batches")
        add_server(session, job, name="nas", kind="smb-only", role="source", address=server.address,
                   username=READER, password=READER_PASSWORD)
        job_id = job.id
    batches: list[list[str]] = []
    original = tasks.scan_batch

    def recording(share_id, folder_tasks, options, publish):
        batches.append([task.path for task in folder_tasks])
        return original(share_id, folder_tasks, options, publish)

    tasks.scan_batch = recording
    try:
        report = run_inventory(job_id, InventoryOptions(), url=database, publish=run_scans_inline)
    finally:
        tasks.scan_batch = original
    [share_id] = report.scan_share_ids
    # The 21 folders of the root were one batch, secret among them; it failed alone.
    assert sorted(FOLDERS + ["secret"]) in [sorted(batch) for batch in batches]
    before = check(database, share_id, server.address, {"secret"})

    # Many folders change at once.
    with LabTree(server.address, "data") as tree:
        for folder in FOLDERS[:8]:
            tree.delete(f"{folder}\\file0.bin")
        for folder in FOLDERS[12:15]:
            for path in sorted((p for p in before if p.startswith(folder + "\\")), key=lambda p: -p.count("\\")):
                tree.delete(path)
            tree.delete(folder)
        changed = {f"{folder}\\new.txt": 77 for folder in FOLDERS[8:12]}
        changed.update({f"{folder}\\file1.bin": 4321 for folder in FOLDERS[8:12]})
        changed["added\\inner\\x.bin"] = 9
        build_tree(tree, changed, ["added", "added\\inner"], start_index=500)
    os.chmod(root / FOLDERS[15], 0o700)  # readable before, not any more
    report = run_inventory(job_id, InventoryOptions(), url=database, publish=run_scans_inline)
    assert report.scan_share_ids == [share_id]
    after = check(database, share_id, server.address, {"secret", FOLDERS[15]})

    assert not any(path.startswith(FOLDERS[15] + "\\") for path in after)
    kept = set(before) & set(after)
    assert f"{FOLDERS[9]}\\file1.bin" in kept and f"{FOLDERS[20 - 1]}\\sub\\deep.txt" in kept
    assert all(before[path].id == after[path].id for path in kept)  # updated in place
