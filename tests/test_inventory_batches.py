"""A scan task lists a batch of folders at once and stores them in one transaction.

A real Samba share of many folders is scanned in this process (``run_scans_inline``,
real SQLite job database) by an account that may not read one of them, with every
folder of a level in one batch: the unreadable folder fails alone, its siblings of the
same batch are stored. Then many folders change at once (files removed, added and
rewritten, whole folders removed and added, a folder becoming unreadable) and the
re-scan must leave exactly the new tree's records, updating kept paths in place. Every
record is compared field by field with an independent listing (plain smbprotocol, as
the administrator) and the counters with that listing. With tiny queries, folders too
long for the listing compound's two queries are listed to the end on an open handle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from common.db import session_scope
from common.settings import reset_settings_cache
from orchestrator.database import upgrade_to_head
from orchestrator.inventory import tasks
from orchestrator.inventory.service import InventoryOptions, run_inventory
from orchestrator.inventory.tasks import run_scans_inline
from orchestrator.jobs import add_server, create_job
from tests.inventory_lab import build_tree, check_scan_records
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


def _job_with_the_lab_server(database: str, name: str, server) -> int:
    """A job whose one source is the lab server, reached as the reader account; its id."""
    with session_scope(database) as session:
        job = create_job(session, name)
        add_server(session, job, name="nas", kind="smb-only", role="source", address=server.address,
                   username=READER, password=READER_PASSWORD)
        return job.id


def test_a_batch_with_an_unreadable_folder_and_a_rescan_of_many_changed_folders(lab, database):
    server, root = lab
    job_id = _job_with_the_lab_server(database, "batches", server)
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
    before = check_scan_records(database, share_id, server.address, frozenset({"secret"}))[1]

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
    after = check_scan_records(database, share_id, server.address, frozenset({"secret", FOLDERS[15]}))[1]

    assert not any(path.startswith(FOLDERS[15] + "\\") for path in after)
    kept = set(before) & set(after)
    assert f"{FOLDERS[9]}\\file1.bin" in kept and f"{FOLDERS[20 - 1]}\\sub\\deep.txt" in kept
    assert all(before[path].id == after[path].id for path in kept)  # updated in place


def test_folders_longer_than_the_compounds_two_queries_are_listed_to_the_end(lab, database, monkeypatch):
    """With queries of 256 bytes (two or three entries each) no folder fits in the listing
    compound's two queries: each is listed again on an open handle, query after query,
    and the records still match an independent listing field by field."""
    monkeypatch.setattr(tasks, "_FIRST_OUTPUT", 256)
    monkeypatch.setattr(tasks, "_SECOND_OUTPUT", 256)
    server, _root = lab
    job_id = _job_with_the_lab_server(database, "long-listings", server)
    report = run_inventory(job_id, InventoryOptions(), url=database, publish=run_scans_inline)
    [share_id] = report.scan_share_ids
    records = check_scan_records(database, share_id, server.address, frozenset({"secret"}))[1]
    assert f"{FOLDERS[3]}\\file4.bin" in records and f"{FOLDERS[19]}\\sub\\deep.txt" in records
