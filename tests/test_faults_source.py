"""Faults (issue 8) on the source side: what users and permissions do to files being moved.

- a file held open exclusively by a user: recorded failed (STATUS_SHARING_VIOLATION), the
  run ends "completed with errors" and never hangs; once released, the next run copies it;
- a file growing while it is copied: recorded failed (SOURCE_CHANGED), never copied in
  an inconsistent state and never under its real name (the copy engine re-checks the
  source before the rename); the next run copies it once it is still;
- a file deleted between the walk and the copy: recorded failed, nothing of it appears on
  the destination; the next run no longer has it;
- a folder the migration account may not read. ``admin users`` (the lab's migration
  account) bypasses every NT ACL and POSIX permission, so no ACL or share option can deny
  it a folder (``veto files`` would hide it, which is worse: silently lost). The test
  migrates with a second, non-admin account (``smsro``) and a folder of mode 0700 owned by
  another user, which truly denies it (STATUS_ACCESS_DENIED): the walk error is recorded,
  the run ends "completed with errors", everything else arrives.

Each ends with the independent field-by-field comparison and no temporary file left over.
"""

from __future__ import annotations

import os
import threading

import pytest
from smbprotocol.open import CreateDisposition, CreateOptions, ImpersonationLevel, Open

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)
from common.crypto import encrypt_secret
from common.db import session_scope
from common.models import Server
from tests.fault_support import FaultLab, kill_fault_workers, wait_until  # noqa: F401  (kill_fault_workers: a fixture)
from tests.lab.samba import SambaServer
from tests.lab.smbio import FILE_READ_DATA, FILE_WRITE_DATA, SYNCHRONIZE, LabTree

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240), pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning")]

READER, READER_PASSWORD = "smsro", "Ro-Passw0rd!"


def test_locked_file_fails_then_next_run_copies_it(samba_factory, worker_factory, tmp_path,
                                                   monkeypatch):
    lab = FaultLab(samba_factory, worker_factory, tmp_path, monkeypatch)
    files = lab.fill(folders=2, files=6)
    lab.snapshot()
    lab.worker()
    locker = LabTree(lab.src.address, "data")
    try:
        held = Open(locker.tree, r"dir1\file003.bin")
        held.create(ImpersonationLevel.Impersonation, FILE_READ_DATA | FILE_WRITE_DATA | SYNCHRONIZE,
                    0, 0, CreateDisposition.FILE_OPEN, CreateOptions.FILE_NON_DIRECTORY_FILE)
        first, state = lab.run()
        assert state == "completed_with_errors"
        assert lab.records(first)[r"dir1\file003.bin"] == ("failed", "STATUS_SHARING_VIOLATION")
        assert not lab.destination_path("dir1/file003.bin").exists()
    finally:
        locker.close()
    assert lab.run()[1] == "succeeded"
    proof = lab.proof(rerun=True)
    assert proof.checked > len(files)
    assert proof.differences == [] and proof.leftovers == []


def copy_while_growing(lab: FaultLab) -> int:
    """Run once while a user's program appends to growing.log on the server; the run id."""
    with LabTree(lab.src.address, "data") as tree:
        tree.write_file("growing.log", os.urandom(1 << 20) * 48)
    lab.snapshot()
    lab.worker()
    stop = threading.Event()

    def grow() -> None:  # a user's program appending to the file, on the server itself
        with open(lab.source_path("growing.log"), "ab") as log:
            while not stop.wait(0.005):
                log.write(os.urandom(4096))
                log.flush()

    grower = threading.Thread(target=grow, daemon=True)
    grower.start()
    try:
        first, state = lab.run()
    finally:
        stop.set()
        grower.join()
    assert state == "completed_with_errors"
    assert lab.records(first)["growing.log"] == ("failed", "SOURCE_CHANGED")
    return first


def test_growing_file_fails_then_next_run_copies_it(samba_factory, worker_factory, tmp_path,
                                                    monkeypatch):
    lab = FaultLab(samba_factory, worker_factory, tmp_path, monkeypatch)
    files = lab.fill(folders=1, files=4)
    copy_while_growing(lab)
    lab.refresh("growing.log")
    assert lab.run()[1] == "succeeded"
    proof = lab.proof(rerun=True)
    assert proof.checked > len(files)
    assert proof.differences == [] and proof.leftovers == []


def test_growing_file_never_sits_under_its_real_name(samba_factory, worker_factory, tmp_path,
                                                     monkeypatch):
    """The engine looks at the source once more before the rename: a file that grew while
    it was copied is never renamed into place, and its temporary file is gone."""
    lab = FaultLab(samba_factory, worker_factory, tmp_path, monkeypatch)
    copy_while_growing(lab)
    assert not lab.destination_path("growing.log").exists()
    assert lab.leftovers() == []


def test_file_deleted_between_walk_and_copy(samba_factory, worker_factory, tmp_path, monkeypatch):
    lab = FaultLab(samba_factory, worker_factory, tmp_path, monkeypatch)
    files = lab.fill(folders=2, files=6)
    lab.snapshot()
    driver = lab.start_run()  # no worker yet: every batch waits in the queue
    wait_until(lambda: driver.said("walked"), 60, "the walk to finish")
    lab.source_path("dir0/file002.bin").unlink()
    lab.refresh("dir0")  # the deletion moved the folder's last-write time
    lab.worker()
    assert driver.wait() == "completed_with_errors"
    state, code = lab.records(driver.run_id)[r"dir0\file002.bin"]
    assert state == "failed" and code == "STATUS_OBJECT_NAME_NOT_FOUND", code
    assert not lab.destination_path("dir0/file002.bin").exists()
    assert lab.run()[1] == "succeeded"
    proof = lab.proof(rerun=True)
    assert proof.checked >= len(files)
    assert proof.differences == [] and proof.leftovers == []


def test_folder_the_account_may_not_read(samba_factory, worker_factory, tmp_path, monkeypatch):
    source = SambaServer("src")
    try:
        os.chmod(source.root, 0o755)  # the non-admin account must reach the share's path
        source.add_share("data")
        source.start()
        source.add_user(READER, READER_PASSWORD)
        lab = FaultLab(samba_factory, worker_factory, tmp_path, monkeypatch, source=source)
        files = lab.fill(folders=3, files=4)
        with LabTree(source.address, "data") as tree:
            tree.mkdir("secret")
            tree.write_file(r"secret\payroll.txt", b"not for the migration account\n")
        os.chmod(lab.source_path("secret"), 0o700)
        with session_scope() as session:
            row = session.query(Server).filter_by(name="src").one()
            row.username, row.credential = READER, encrypt_secret(READER_PASSWORD)
        with LabTree(source.address, "data", READER, READER_PASSWORD) as tree, \
                pytest.raises(Exception, match="STATUS_ACCESS_DENIED"):
            list(tree.listdir("secret"))
        lab.snapshot()
        lab.worker()
        run_id, state = lab.run()
        assert state == "completed_with_errors"
        assert lab.walk_errors(run_id) == [("secret", "STATUS_ACCESS_DENIED")]
        proof = lab.proof(expected_missing={"secret"})
        assert proof.checked > len(files)
        assert proof.differences == [] and proof.leftovers == []
    finally:
        source.destroy()
