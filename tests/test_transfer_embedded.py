"""A whole transfer on the embedded defaults: SQLite job database, SQLite broker, and the
``sms-worker`` processes that ``sms transfer run --wait`` starts and stops by itself.

A source lab smbd holds the hostile tree (tests.lab.trees) plus a few folders of small
files, cut into many batches; the destination lab smbd already holds data of its own.
Checked with the independent field-by-field comparison (tests.lab.compare) and through the
job database:

1. first run: the destination's own data moves into PreExistingData untouched, every
   entry arrives identical, reconciliation is clean, cutover is allowed;
2. re-run with nothing changed, started in the background (``run`` without ``--wait``)
   and followed with ``status``: nothing is copied, everything is unchanged;
3. a changed file is copied again, a new one copied, a deleted file and a deleted folder
   (one of them read-only) are removed from the destination (PreExistingData untouched;
   its read-only file was moved there, not copied), while a file held open
   exclusively on the source fails with STATUS_SHARING_VIOLATION: the run ends
   "completed with errors" (exit code 1), the gate refuses cutover unless overridden, and
   the error-only CSV names the file;
4. once the file is released, the next run copies it and reconciles clean.
"""

from __future__ import annotations

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)

import csv
import json
import shutil
import time

import pytest
from smbprotocol.open import CreateDisposition, CreateOptions, ImpersonationLevel, Open
from sqlalchemy import func, select

from common.db import session_scope
from common.models import Batch, ServerRole, TransferRun
from common.settings import get_settings
from orchestrator.database import upgrade_to_head
from orchestrator.transfer.reconcile import cutover_allowed, pairing_cutover_allowed, reconcile
from tests.lab.smbio import FILE_READ_DATA, FILE_WRITE_DATA, SYNCHRONIZE, LabTree
from tests.lab.trees import HIDDEN, READONLY, build_hostile_tree
from tests.transfer_support import (
    record_states,
    register_servers,
    sms,
    unexplained_differences,
    use_settings,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning")

BATCH_FILES = 12


def latest_run_id() -> int:
    with session_scope() as session:
        return session.scalar(select(func.max(TransferRun.id)))


def run_transfer(*extra: str) -> tuple[int, int, str]:
    """``sms transfer run --job lab --wait``; returns (exit code, run id, output)."""
    result = sms("transfer", "run", "--job", "lab", "--wait", "--retries", "0", *extra)
    return result.returncode, latest_run_id(), result.stdout + result.stderr


def test_transfer_on_embedded_defaults(samba_factory, tmp_path, monkeypatch):
    use_settings(monkeypatch, SMS_STATE_DIR=str(tmp_path / "state"),
                 SMS_BATCH_MAX_FILES=str(BATCH_FILES), SMS_WORKER_CONCURRENCY="2")
    assert get_settings().broker_is_embedded
    upgrade_to_head(get_settings().database_url)
    src, dst = samba_factory("src"), samba_factory("dst")

    with LabTree(src.address, "data") as lab:
        tree = build_hostile_tree(lab, "hostile", large_size=3 << 20)
        for folder in range(3):
            lab.mkdir(f"bulk{folder}")
            for number in range(15):
                lab.write_file(f"bulk{folder}\\file{number:02d}.txt",
                               f"folder {folder} file {number}\n".encode() * (number + 1))
    with LabTree(dst.address, "data") as lab:
        lab.write_file("old report.txt", b"the destination's own data\n")
        lab.set_basic_info("old report.txt", attributes=READONLY | HIDDEN)
        lab.mkdir("old folder")
        lab.write_file("old folder\\inner.txt", b"inner\n")

    register_servers("lab", {"src": (src, ServerRole.SOURCE), "dst": (dst, ServerRole.DESTINATION)})
    paired = sms("transfer", "pair", "--job", "lab", "--source", "src", "--destination", "dst",
                 "--share", "data", "--json")
    assert paired.returncode == 0, paired.stderr

    # 1. First run.
    code, run1, output = run_transfer("--checksum", "fast")
    assert code == 0, output
    with session_scope() as session:
        report = reconcile(session, run1)
        assert report.state == "succeeded" and report.clean, report.to_json()
        [share] = report.shares
        assert share.inventoried == share.copied == share.files + share.directories
        assert share.verified == share.files > len(tree.files)
        assert session.scalar(select(func.count()).select_from(Batch).where(Batch.run_id == run1)) > 3
        assert cutover_allowed(session, run1)
    source_files = set(tree.files) | {f"bulk{folder}\\file{number:02d}.txt"
                                      for folder in range(3) for number in range(15)}
    assert unexplained_differences(src, dst, ignore_access_times_of=source_files) == []
    with LabTree(dst.address, "data") as lab:
        assert lab.basic_info("PreExistingData\\old report.txt")[4] & (READONLY | HIDDEN) == READONLY | HIDDEN
        assert b"".join(lab.read_chunks("PreExistingData\\old report.txt")) == b"the destination's own data\n"
        assert b"".join(lab.read_chunks("PreExistingData\\old folder\\inner.txt")) == b"inner\n"

    # 2. Re-run, nothing changed, started in the background: nothing copied.
    started = sms("transfer", "run", "--job", "lab", "--json")
    assert started.returncode == 0, started.stdout + started.stderr
    [run2] = json.loads(started.stdout)["run_ids"]
    deadline = time.monotonic() + 180
    while True:
        status = json.loads(sms("transfer", "status", str(run2), "--json").stdout)
        if status["state"] not in ("pending", "running") or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert status["state"] == "succeeded", status
    with session_scope() as session:
        [share] = reconcile(session, run2).shares
    assert share.copied == 0 and share.unchanged == share.inventoried, share

    # 3. Changed, new and deleted entries, and a file locked on the source.
    with LabTree(src.address, "data") as lab:
        lab.write_file("bulk0\\file03.txt", b"changed on the source\n")
        lab.write_file("bulk1\\new file.txt", b"new on the source\n")
        lab.write_file("bulk0\\file05.txt", b"changed, then locked by a user\n")
    source_root = src.shares["data"].path
    (source_root / "bulk1" / "file07.txt").unlink()
    shutil.rmtree(source_root / "bulk2")
    (source_root / "hostile" / "attributes" / "readonly.txt").unlink()
    locker = LabTree(src.address, "data")
    try:
        held = Open(locker.tree, "bulk0\\file05.txt")
        held.create(ImpersonationLevel.Impersonation, FILE_READ_DATA | FILE_WRITE_DATA | SYNCHRONIZE,
                    0, 0, CreateDisposition.FILE_OPEN, CreateOptions.FILE_NON_DIRECTORY_FILE)
        code, run3, output = run_transfer()
        held.close()
    finally:
        locker.close()
    assert code == 1, output
    states = record_states(run3)
    assert states["bulk0\\file05.txt"] == ("failed", "STATUS_SHARING_VIOLATION")
    assert states["bulk0\\file03.txt"][0] == "copied"
    assert states["bulk1\\new file.txt"][0] == "copied"
    assert "bulk2" not in states and "bulk1\\file07.txt" not in states
    with session_scope() as session:
        assert session.get(TransferRun, run3).state.value == "completed_with_errors"
        [share] = reconcile(session, run3).shares
        assert share.failed == 1 and not share.clean
        assert not cutover_allowed(session, run3)
        assert cutover_allowed(session, run3, override=True)
        pairing_id = session.get(TransferRun, run3).pairing_id
        assert not pairing_cutover_allowed(session, pairing_id)
    assert sms("transfer", "gate", str(run3)).returncode == 1
    assert sms("transfer", "gate", str(run3), "--override").returncode == 0
    exported = sms("transfer", "export", str(run3), "--dir", str(tmp_path / "logs"))
    assert exported.returncode == 0, exported.stderr
    with open(tmp_path / "logs" / f"transfer-run-{run3}-errors.csv", newline="") as handle:
        errors = list(csv.DictReader(handle))
    assert [(row["path"], row["result"], row["error_code"]) for row in errors] == [
        ("bulk0\\file05.txt", "failed", "STATUS_SHARING_VIOLATION")]
    with open(tmp_path / "logs" / f"transfer-run-{run3}.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(states)
    with LabTree(dst.address, "data") as lab:
        names = {name for name, _attributes, _size in lab.listdir("")}
        assert "bulk2" not in names and "PreExistingData" in names
        assert "file07.txt" not in {name for name, _a, _s in lab.listdir("bulk1")}
        assert "readonly.txt" not in {name for name, _a, _s in lab.listdir("hostile\\attributes")}
        assert b"".join(lab.read_chunks("PreExistingData\\old report.txt")) == b"the destination's own data\n"

    # 4. The released file is picked up by the next run, and everything reconciles clean.
    code, run4, output = run_transfer()
    assert code == 0, output
    assert record_states(run4)["bulk0\\file05.txt"][0] == "copied"
    with session_scope() as session:
        assert reconcile(session, run4).clean
        assert pairing_cutover_allowed(session, pairing_id)
    assert unexplained_differences(src, dst, ignore_all_access_times=True) == []
    # Every run's records are kept.
    listed = json.loads(sms("transfer", "list", "--job", "lab", "--json").stdout)
    assert [run["run_id"] for run in listed] == [run4, run3, run2, run1]
