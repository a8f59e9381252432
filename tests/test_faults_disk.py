"""Fault (issue 8): the destination's disk fills up during a transfer.

The destination share lives on a small tmpfs mounted by the test (8 MiB, unmounted at
teardown) and the source holds more than fits. The run must end "completed with errors"
with every file that did not fit recorded failed with STATUS_DISK_FULL (its path in the
message), no temporary file left behind and nothing incomplete under a real name: every
file the destination does hold is identical to the source's. Once space is freed (the
tmpfs grown to 64 MiB), the next run completes and the comparison finds nothing.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from sqlalchemy import select

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)
from common.db import session_scope
from common.models import FileRecord
from tests.fault_support import FaultLab, kill_fault_workers  # noqa: F401  (kill_fault_workers: a fixture)
from tests.lab.smbio import LabTree
from tests.test_smb_copy import tmpfs  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240), pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning")]


def test_full_destination_then_space_freed(samba_factory, worker_factory, tmpfs, tmp_path,  # noqa: F811
                                           monkeypatch):
    destination = samba_factory("full", shares=())
    mount_point = tmpfs("destination", "8m")
    destination.add_share("data", path=mount_point)
    lab = FaultLab(samba_factory, worker_factory, tmp_path, monkeypatch, destination=destination,
                   batch_files=4)
    files = lab.fill(folders=2, files=6)
    with LabTree(lab.src.address, "data") as tree:
        tree.mkdir("large")
        for number in range(6):
            tree.write_file(f"large\\part{number}.bin", os.urandom(2 << 20))
    lab.snapshot()
    lab.worker()

    first, state = lab.run()
    assert state == "completed_with_errors"
    with session_scope() as session:
        failed = session.execute(select(FileRecord.relative_path, FileRecord.error_code,
                                        FileRecord.error_message)
                                 .where(FileRecord.run_id == first, FileRecord.state == "failed")).all()
    assert failed and {code for _path, code, _message in failed} == {"STATUS_DISK_FULL"}, failed
    assert all(path.rpartition("\\")[2] in message for path, _code, message in failed), failed
    proof = lab.proof(expected_missing={path for path, _code, _message in failed})
    assert proof.differences == [] and proof.leftovers == []

    subprocess.run(["mount", "-o", "remount,size=64m", str(mount_point)], check=True)
    assert lab.run()[1] == "succeeded"
    proof = lab.proof(rerun=True)
    assert proof.checked > len(files)
    assert proof.differences == [] and proof.leftovers == []
